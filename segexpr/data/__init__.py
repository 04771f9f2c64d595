"""Datasets and DataModules: SynthFACS (embedded) and the real releases in their original layouts."""
from segexpr.data.affectnet import AffectNet, AffectNetDataModule
from segexpr.data.aus import AUAnnotated, read_ganimation_pkl, read_openface_csv, read_openface_dir
from segexpr.data.base import EpochSampler, FaceDataModule
from segexpr.data.celebamask_hq import CelebAMaskHQ, CelebAMaskHQDataModule, to_order_a, to_order_b
from segexpr.data.combined import CombinedDataModule
from segexpr.data.ganimation import GANimationDataModule, GANimationFaces
from segexpr.data.rafd import RaFD, RaFDDataModule, parse_rafd_name
from segexpr.data.synthetic import SyntheticFaces, SyntheticFacesDataModule, changeable_area, identity_params, render
from segexpr.data.transforms import build_transforms
from segexpr.data.validation import DatasetValidationError

__all__ = [
    "AUAnnotated", "AffectNet", "AffectNetDataModule", "CelebAMaskHQ", "CelebAMaskHQDataModule", "CombinedDataModule",
    "DatasetValidationError", "EpochSampler", "FaceDataModule", "GANimationDataModule", "GANimationFaces", "RaFD", "RaFDDataModule", "SyntheticFaces",
    "SyntheticFacesDataModule", "build_transforms", "changeable_area", "identity_params", "parse_rafd_name",
    "read_ganimation_pkl", "read_openface_csv", "read_openface_dir", "render", "to_order_a", "to_order_b",
]
