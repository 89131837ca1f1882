"""Exported models: `mlic eval` scores them, and a .onnx predicts with onnxruntime alone."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from mlic.cli import main  # noqa: E402
from mlic.export import export_model  # noqa: E402
from mlic.inference import Predictor  # noqa: E402

QUIET = ["--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory):
    import shutil
    run = shutil.copytree(tiny_run, tmp_path_factory.mktemp("exported") / tiny_run.name)
    return run, export_model(run, "onnx")


def test_eval_scores_an_exported_model_as_its_checkpoint(exported_run, colour_dataset, capsys):
    run, onnx_file = exported_run
    assert main(["eval", str(run), *QUIET]) == 0
    assert main(["eval", str(onnx_file), *QUIET]) == 0  # the run's test split, by default
    torch_report = json.loads((run / "eval_test.json").read_text())
    onnx_report = json.loads((run / f"eval_test_{onnx_file.stem}_onnx.json").read_text())
    assert onnx_report["mAP"] == pytest.approx(torch_report["mAP"], abs=1e-4)
    assert onnx_report["OF1"] == pytest.approx(torch_report["OF1"], abs=1e-3)
    # a file on its own needs data, and says so
    alone = onnx_file.parent.parent.parent / "alone.onnx"
    alone.write_bytes(onnx_file.read_bytes())
    capsys.readouterr()
    assert main(["eval", str(alone), *QUIET]) == 2
    assert "pass --data" in capsys.readouterr().err
    assert main(["eval", str(alone), "--data", str(colour_dataset["test"]), "--json", *QUIET]) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == pytest.approx(torch_report["mAP"],
                                                                       abs=1e-4)


def test_an_onnx_file_predicts_without_the_onnx_package(exported_run, colour_dataset,
                                                        monkeypatch):
    _, onnx_file = exported_run
    image = colour_dataset["root"] / "images" / "img000.png"
    expected = Predictor.load(onnx_file).predict([image])
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails
    predictor = Predictor.load(onnx_file)
    assert predictor.predict([image]) == expected


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_eval_scores_an_int8_model(exported_run, fmt, tmp_path):
    """`mlic eval` on an NNCF INT8 file: its own evaluation, named after the file, close to FP32."""
    pytest.importorskip("nncf", reason="INT8 export needs nncf (export extra)")
    if fmt == "openvino":
        pytest.importorskip("openvino")
    run, _ = exported_run
    int8 = export_model(run, fmt, int8=True, calibration_size=16)  # into RUN/export/
    assert main(["eval", str(int8), *QUIET]) == 0
    fp32 = json.loads((run / "eval_test.json").read_text())
    suffix = {"onnx": "onnx", "openvino": "xml"}[fmt]
    report = json.loads((run / f"eval_test_{int8.stem}_{suffix}.json").read_text())
    assert report["model"] == str(int8) and report["num_images"] == fp32["num_images"]
    assert report["mAP"] == pytest.approx(fp32["mAP"], abs=0.05)  # 8 bits: close, not equal
    assert report["decisions"]["rule"] == fp32["decisions"]["rule"]
