"""Model shapes, the feature/embedding/classifier interface, safe weights and model specs."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from kdbench.errors import KdbenchError
from kdbench.models import build_model, classifier_of, forward_all
from kdbench.specs import resolve_model
from kdbench.weights import load_state_dict, load_weights, save_weights

CASES = [("smallcnn", 1, 8), ("smallcnn", 1, 28), ("cwnet", 1, 28), ("cwnet", 3, 32), ("resnet18", 3, 32),
         ("preact-resnet18", 3, 32), ("mobilenetv2", 3, 32), ("wrn-16-2", 3, 32), ("vit", 3, 32), ("vit", 1, 8)]


@pytest.mark.parametrize("arch,c,s", CASES)
def test_shapes_and_interface(arch, c, s):
    torch.manual_seed(0)
    m = build_model(arch, 7, c, s).eval()
    x = torch.rand(3, c, s, s)
    out = forward_all(m, x)
    assert out.logits.shape == (3, 7)
    assert torch.allclose(out.logits, m(x), atol=1e-5)
    assert out.feature_map.dim() == 4 and out.feature_map.shape[0] == 3
    w = classifier_of(m)
    assert w.weight.shape == (7, out.embedding.shape[1])
    # the classifier applied to the embedding gives the logits
    assert torch.allclose(w(out.embedding), out.logits, atol=1e-5)


def test_param_counts_match_references():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(build_model("wrn-34-10", 10, 3, 32)) == 46_160_474  # TRADES WRN-34-10
    assert n(build_model("resnet18", 10, 3, 32)) == 11_173_962
    assert n(build_model("smallcnn", 10, 1, 28)) < 250_000  # checkpoint < 1 MB


def test_cwnet_layout_matches_papernot():
    m = build_model("cwnet", 10, 1, 28)
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    dense = [l for l in m.modules() if isinstance(l, nn.Linear)]
    pools = [l for l in m.modules() if isinstance(l, nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64] and len(pools) == 2
    assert [d.out_features for d in dense] == [200, 200, 10]
    assert dense[0].in_features == 64 * 4 * 4


def test_hooks_for_plain_models():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    m = Plain()
    x = torch.rand(2, 1, 5, 5)
    out = forward_all(m, x)
    assert out.feature_map.shape == (2, 4, 5, 5)
    assert torch.allclose(out.embedding, m.conv(x).mean((2, 3)))
    assert classifier_of(m) is m.fc


def test_safetensors_roundtrip_and_prefixes(tmp_path):
    m = build_model("smallcnn", 10, 1, 8)
    save_weights(m, tmp_path / "w.safetensors")
    m2 = build_model("smallcnn", 10, 1, 8)
    sha = load_weights(m2, tmp_path / "w.safetensors")
    assert len(sha) == 64
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, tmp_path / "w.pt")
    assert set(load_state_dict(tmp_path / "w.pt")) == set(m.state_dict())


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('KDBENCH_PWN', '/tmp/kdbench-pwned-2')}",))


def test_pickle_weights_refused_never_executed(tmp_path, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("KDBENCH_PWN", str(flag))
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    torch.save({"w": _Evil()}, tmp_path / "evil2.pt")
    for path in (p, tmp_path / "evil2.pt"):
        with pytest.raises(KdbenchError, match="refusing to load"):
            load_state_dict(path)
    assert not flag.exists()


@pytest.mark.subprocess
def test_equal_weights_give_an_equal_file(tmp_path):
    """Equal weights and metadata give byte-identical files (the sha256 keys leaderboard rows and
    checks teachers), in one process and in another; safetensors reads them back, metadata too."""
    from safetensors import safe_open

    torch.manual_seed(0)
    m = build_model("smallcnn", 10, 1, 8)
    meta = {"method": "pgd-at", "epoch": "5", "select": "clean", "kdbench": "0.1.0", "arch": "smallcnn"}
    for i in range(8):
        save_weights(m, tmp_path / f"w{i}.safetensors", metadata=meta)
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    code = ("import sys, json, torch; from kdbench.models import build_model; from kdbench.weights import save_weights;"
            "m = build_model('smallcnn', 10, 1, 8); m.load_state_dict(torch.load(sys.argv[1], weights_only=True));"
            "save_weights(m, sys.argv[2], metadata=json.loads(sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "sd.pt"), str(tmp_path / "other.safetensors"),
                    json.dumps(meta)], check=True)
    first = (tmp_path / "w0.safetensors").read_bytes()
    assert all((tmp_path / f"w{i}.safetensors").read_bytes() == first for i in range(1, 8))
    assert (tmp_path / "other.safetensors").read_bytes() == first
    assert int.from_bytes(first[:8], "little") % 8 == 0
    with safe_open(str(tmp_path / "w0.safetensors"), "pt") as f:
        assert f.metadata() == meta
    sd = load_state_dict(tmp_path / "w0.safetensors")
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())


def test_weights_mismatch_is_clear(tmp_path):
    save_weights(build_model("smallcnn", 10, 1, 8), tmp_path / "w.safetensors")
    with pytest.raises(KdbenchError, match="do not fit"):
        load_weights(build_model("smallcnn", 5, 1, 8), tmp_path / "w.safetensors")


def test_factory_specs(tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text("import torch.nn as nn\n"
                 "def make(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
                 "def broken():\n    raise ValueError('nope')\n"
                 "def notmodel():\n    return 3\n")
    lm = resolve_model(f"{f}:make", num_classes=4, in_channels=1, input_size=8)
    assert lm.model(torch.rand(2, 1, 8, 8)).shape == (2, 4) and not lm.model.training
    with pytest.raises(KdbenchError, match="raised ValueError: nope"):
        resolve_model(f"{f}:broken")
    with pytest.raises(KdbenchError, match="not a torch.nn.Module"):
        resolve_model(f"{f}:notmodel")
    with pytest.raises(KdbenchError, match="no callable"):
        resolve_model(f"{f}:missing")
    lm = resolve_model("torch.nn:Identity")
    assert isinstance(lm.model, nn.Identity)
    with pytest.raises(KdbenchError, match="unknown model"):
        resolve_model("nosuchnet", num_classes=10, in_channels=1, input_size=8)


def test_run_dir_spec(digits_teacher):
    lm = resolve_model(str(digits_teacher))
    assert lm.arch == "smallcnn" and lm.weights.endswith("best.safetensors") and len(lm.weights_sha256) == 64
    assert lm.model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
