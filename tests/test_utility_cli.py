"""``lpla utility`` with every encoder kind, on a registered dataset or on the user's images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fixtures_user_model import TinyEncoder  # noqa: E402


def _run(args: list[str]):
    from typer.testing import CliRunner

    from lpla.cli import app

    return CliRunner().invoke(app, args)


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return lines[-1]


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A user's encoder as torch.export writes it, with a dynamic batch dimension."""
    torch.manual_seed(7)
    model = TinyEncoder().eval()
    program = torch.export.export(
        model, (torch.rand(4, 1, 12, 12),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, tmp_path / "model.pt2")
    return tmp_path / "model.pt2"


def _imagefolder(root: Path, per_class: int = 6, size: int = 12, mode: str = "L") -> Path:
    """Three classes of grey squares whose bright quadrant says the class (learnable)."""
    g = np.random.default_rng(0)
    for label, name in enumerate(("circle", "square", "star")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = g.integers(0, 50, size=(size, size)).astype(np.uint8)
            r, c = divmod(label, 2)
            half = size // 2
            img[r * half : (r + 1) * half, c * half : (c + 1) * half] += 180
            Image.fromarray(img).convert(mode).save(root / name / f"{i}.png")
    return root


def test_exported_encoder_on_an_image_folder(exported: Path, tmp_path: Path) -> None:
    folder = _imagefolder(tmp_path / "imgs")
    out = tmp_path / "u" / "utility.json"
    args = ["utility", "--encoder", str(exported), "--images", str(folder), "--out", str(out)]
    result = _run([*args, "--test-fraction", "0.5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    util = json.loads(out.read_text())
    assert util["encoder_kind"] == "export" and util["images"] == str(folder)
    assert (
        util["num_train"] == 9 and util["num_test"] == 9 and util["chance"] == pytest.approx(1 / 3)
    )
    assert util["split_seed"] == 1 and util["test_fraction"] == 0.5 and util["feature_dim"] == 8
    assert {"linear_probe_acc", "knn_acc", "linear_probe_acc_pixels"} <= set(util)
    assert "linear probe" in result.output and "raw pixels" in result.output
    assert f"written: {out}" in result.output
    assert not list(out.parent.glob(".*tmp*"))  # written atomically: no temporary left over
    again = _run([*args, "--test-fraction", "0.5", "--seed", "1"])
    assert again.exit_code == 0 and json.loads(out.read_text())["knn_acc"] == util["knn_acc"]


def test_separate_test_images_and_the_default_output(
    exported: Path, tmp_path: Path, monkeypatch
) -> None:
    train = _imagefolder(tmp_path / "train", per_class=4)
    test = _imagefolder(tmp_path / "test", per_class=2, size=20, mode="RGB")  # resized, grey
    monkeypatch.chdir(tmp_path)
    result = _run(
        ["utility", "--encoder", str(exported), "--images", str(train), "--test-images", str(test)]
    )
    assert result.exit_code == 0, result.output
    util = json.loads((tmp_path / "utility.json").read_text())
    assert util["num_train"] == 12 and util["num_test"] == 6
    assert util["test_images"] == str(test) and "split_seed" not in util


def test_torchvision_and_timm_encoders(tmp_path: Path) -> None:
    folder = _imagefolder(tmp_path / "imgs", per_class=4)
    out = tmp_path / "tv.json"
    result = _run(
        [
            *("utility", "--encoder", "torchvision:resnet18", "--images", str(folder)),
            *("--out", str(out), "--no-pixels"),
        ]
    )
    assert result.exit_code == 0, result.output
    util = json.loads(out.read_text())
    assert util["feature_dim"] == 512 and util["normalize"]["source"] == "imagenet"
    assert util["weights"] is None and "randomly initialised" in util["warning"]
    assert "warning: no --weights" in result.output

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    weights = tmp_path / "t.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(weights))
    out = tmp_path / "timm.json"
    result = _run(
        [
            *("utility", "--encoder", "timm:test_resnet", "--weights", str(weights)),
            *("--images", str(folder), "--normalize", "imagenet", "--no-pixels", "--out", str(out)),
        ]
    )
    assert result.exit_code == 0, result.output
    util = json.loads(out.read_text())
    assert util["encoder_kind"] == "timm" and util["weights"] == str(weights.resolve())
    assert util["normalize"]["source"] == "imagenet" and "warning" not in util


def test_factory_encoder_on_a_registered_dataset(tmp_path: Path) -> None:
    torch.manual_seed(5)
    weights = tmp_path / "w.safetensors"
    save_file(TinyEncoder().state_dict(), str(weights))
    out = tmp_path / "d.json"
    result = _run(
        [
            *(
                "utility",
                "--encoder",
                "fixtures_user_model:tiny_encoder",
                "--weights",
                str(weights),
            ),
            *(
                "--dataset",
                "digits",
                "--train-limit",
                "200",
                "--test-limit",
                "60",
                "--out",
                str(out),
            ),
        ]
    )
    assert result.exit_code == 0, result.output
    util = json.loads(out.read_text())
    assert util["dataset"] == "digits" and util["num_train"] == 200 and util["num_test"] == 60
    assert util["encoder_kind"] == "factory" and util["feature_dim"] == 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "FLAT"], "has no class labels; put the images in class sub-folders"),
        (["--images", "IMGS", "--dataset", "digits"], "give --dataset or --images, not both"),
        (["--test-images", "IMGS"], "--test-images needs --images"),
        ([], "does not say which images to probe on; pass --dataset NAME or --images FOLDER"),
        (["--images", "IMGS", "--normalize", "bogus"], "cannot read --normalize 'bogus'"),
        (["--images", "IMGS", "--test-fraction", "1.5"], "--test-fraction must lie strictly"),
        (["--dataset", "digits"], "failed on a dummy batch of shape (2, 1, 8, 8)"),
    ],
)
def test_bad_input_is_one_line(exported: Path, tmp_path: Path, extra, message) -> None:
    _imagefolder(tmp_path / "IMGS", per_class=2)
    (tmp_path / "FLAT").mkdir()
    for i in range(3):
        Image.new("L", (12, 12), i).save(tmp_path / "FLAT" / f"{i}.png")
    extra = [str(tmp_path / e) if e in ("FLAT", "IMGS") else e for e in extra]
    result = _run(["utility", "--encoder", str(exported), *extra])
    line = _error_line(result)
    assert line.startswith("lpla: error:") and message in line, result.output


def test_a_pickle_as_encoder_is_refused_with_a_hint(tmp_path: Path) -> None:
    torch.save(TinyEncoder().state_dict(), tmp_path / "model.pth")
    result = _run(["utility", "--encoder", str(tmp_path / "model.pth"), "--dataset", "digits"])
    assert "is a pickled checkpoint, not TorchScript; lpla never unpickles it" in _error_line(
        result
    )
