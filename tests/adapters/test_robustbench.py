"""The RobustBench adapter, offline, with a locally stored checkpoint."""
import pytest
import torch

from kdbench.errors import KdbenchError
from kdbench.specs import resolve_model


def test_robustbench_model_from_local_dir(tmp_path, monkeypatch):
    from kdbench.adapters.compat import prepare_robustbench

    prepare_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    ref = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Wong2020Fast"]["model"]().eval()
    d = tmp_path / "cifar10" / "Linf"
    d.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, d / "Wong2020Fast.pt")
    monkeypatch.setenv("KDBENCH_ROBUSTBENCH_DIR", str(tmp_path))
    lm = resolve_model("robustbench:Wong2020Fast")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), ref(x), atol=1e-5)
    assert lm.spec == "robustbench:cifar10/Linf/Wong2020Fast" and len(lm.weights_sha256) == 64
    assert not lm.model.training


def test_robustbench_missing_checkpoint_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_ROBUSTBENCH_DIR", str(tmp_path))
    with pytest.raises(KdbenchError, match=r"checkpoint: no such file or directory: .*cifar10/Linf/Carmon2019Unlabeled\.pt"):
        resolve_model("robustbench:Carmon2019Unlabeled")
    with pytest.raises(KdbenchError, match="unknown RobustBench model"):
        resolve_model("robustbench:NoSuchModel2099")
