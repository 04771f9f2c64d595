"""The console command end to end: fit from YAML, then edit and transfer photos from the checkpoint."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from segexpr.cli import main
from segexpr.data.synthetic import SyntheticFaces
from segexpr.cli.edit import parse_aus
from segexpr.io import CheckpointError, load_module, read_checkpoint, write_image
from segexpr.modules.joint import JointModule

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32

TINY_CONFIG = """
seed_everything: 0
model:
  class_path: segexpr.modules.JointModule
  init_args:
    task: both
    region_source: segmenter
    n_critic: 1
    adv_loss: hinge
    ema_decay: 0.9
    sample_every_n_steps: 0
    image_size: {size}
    segmenter: {{name: unet, base_channels: 8, depth: 2}}
    generator: {{base_channels: 8, n_down: 2, n_res: 1, local_channels: 8, local_n_res: 1, crop_size: 16}}
    coder: {{code_dim: 16, base_channels: 8, n_down: 2}}
    discriminator: {{base_channels: 8, n_layers: 3, local_channels: 8, local_n_layers: 2, feature_hidden: 16}}
data:
  class_path: segexpr.data.SyntheticFacesDataModule
  init_args: {{size: {size}, train_length: 40, val_length: 20, test_length: 20, pairs: true, augment: false, batch_size: 4}}
trainer:
  accelerator: cpu
  max_steps: 6
  limit_val_batches: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: segexpr.callbacks.ResultImage
      init_args: {{path: {root}/result.png, num_samples: 2}}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/ckpt, save_last: true}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(size=SIZE, root=root))
    assert main(["fit", "--config", str(config)]) == 0
    return root


def _faces(folder: Path, count: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    faces = SyntheticFaces(size=48, length=count, seed=3, split="test")
    return [write_image(faces[i]["image"], folder / f"face{i}.jpg") for i in range(count)]


def test_fit_writes_checkpoint_and_result_image(trained):
    assert (trained / "ckpt" / "last.ckpt").is_file()
    image = Image.open(trained / "result.png")
    # 2 rows; columns: source, 8 expressions, reference, transfer, regions (tiles 32 px + padding + title strip)
    assert image.width == 12 * (SIZE + 2) + 2 and image.height == 2 * (SIZE + 2) + 2 + 16


def test_checkpoint_loads_safely_and_round_trips(trained):
    ckpt = read_checkpoint(trained / "ckpt" / "last.ckpt")  # weights_only=True inside
    assert "state_dict" in ckpt
    module = load_module(trained / "ckpt" / "last.ckpt", expected=JointModule)
    reloaded = JointModule.load_from_checkpoint(trained / "ckpt" / "last.ckpt", map_location="cpu").eval()
    images = SyntheticFaces(size=SIZE, length=2, seed=1, split="val")[0]["image"][None]
    assert torch.equal(module.edit(images, expression="happy"), reloaded.edit(images, expression="happy"))


def test_edit_and_transfer_commands_write_images(trained, tmp_path):
    inputs = _faces(tmp_path / "in")
    out = tmp_path / "out"
    ckpt = str(trained / "ckpt" / "last.ckpt")
    assert main(["edit", str(tmp_path / "in"), "--ckpt", ckpt, "--expression", "all", "--out", str(out),
                 "--no-align"]) == 0
    written = sorted(out.glob("*.jpg"))  # the input's format
    assert len(written) == 2 * 8
    assert Image.open(out / "face0_happy.jpg").size == Image.open(inputs[0]).size  # same size as the input
    assert main(["edit", str(inputs[0]), "--ckpt", ckpt, "--aus", "AU6=0.8,AU12=1", "--out", str(out),
                 "--no-align", "--format", "png"]) == 0
    assert (out / "face0_aus.png").is_file()
    assert main(["transfer", str(inputs[0]), "--reference", str(inputs[1]), "--ckpt", ckpt, "--out", str(out),
                 "--no-align"]) == 0
    assert (out / "face0_from_face1.jpg").is_file()


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "segexpr"), "edit", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--expression" in result.stdout


def test_bad_checkpoints_are_refused_with_the_file_named(tmp_path, trained):
    with pytest.raises(CheckpointError, match="not found"):
        load_module(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        load_module(garbage)

    class Evil:  # an object that would run code when unpickled with weights_only=False
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_module(evil)
    # a real checkpoint whose weights do not fit the architecture it names
    ckpt = torch.load(trained / "ckpt" / "last.ckpt", weights_only=True)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    broken = tmp_path / "broken.ckpt"
    torch.save(ckpt, broken)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_module(broken, expected=JointModule)
    # a checkpoint that names a class outside segexpr
    ckpt = torch.load(trained / "ckpt" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "os.system"
    foreign = tmp_path / "foreign.ckpt"
    torch.save(ckpt, foreign)
    with pytest.raises(CheckpointError, match="not part of segexpr"):
        load_module(foreign)


def test_bad_cli_input_is_reported(trained, tmp_path, capsys):
    ckpt = str(trained / "ckpt" / "last.ckpt")
    assert main(["edit", str(tmp_path / "nowhere.jpg"), "--ckpt", ckpt, "--expression", "happy",
                 "--out", str(tmp_path), "--no-align"]) == 1
    assert "segexpr edit: input images not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["edit", str(corrupt), "--ckpt", ckpt, "--expression", "happy", "--out", str(tmp_path / "o"),
                 "--no-align"]) == 1
    assert "corrupt.jpg" in capsys.readouterr().err
    with pytest.raises(ValueError, match="corrupt.jpg"):  # --debug: the exception itself
        main(["edit", str(corrupt), "--ckpt", ckpt, "--expression", "happy", "--out", str(tmp_path / "o"),
              "--no-align", "--debug"])
    with pytest.raises(SystemExit):
        main(["edit", str(corrupt), "--ckpt", "x.ckpt", "--expression", "smug", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="AU99"):
        parse_aus("AU99=1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_aus("AU12=3")
