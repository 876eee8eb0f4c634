from pathlib import Path

import pytest
import torch

from querylife.calibration import Calibration
from querylife.checkpoint import Head, load_head, save_calibration, save_head, version_for
from querylife.model import QueryLifeModel, load_model
from schemas import ScoreLabel


@pytest.fixture(scope="module")
def model() -> QueryLifeModel:
    torch.set_num_threads(2)
    return load_model()


def test_load_model_contract_and_determinism(model: QueryLifeModel) -> None:
    assert model.version.startswith("querylife-v2-") and model.embed_dim == 256
    assert "Tshirts" in model.product_types and model.image_size in (128, 160, 192, 224)
    texts = ["black running shoes men", "Nike Men White Sports Shoes", ""]
    a = model.encode_texts(texts)
    assert a.shape == (3, 256)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    again = load_model()
    assert again.version == model.version
    assert torch.equal(again.encode_texts(texts), a)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, model.image_size, model.image_size, generator=g) * 2 - 1
    im = model.encode_images(pixels)
    assert im.shape == (2, 256) and torch.allclose(im.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.equal(again.encode_images(pixels), im)


def test_fuse_relevance_label(model: QueryLifeModel) -> None:
    t = model.encode_texts(["Puma Men Black Casual Shoes", "Fastrack Women Pink Watch"])
    g = torch.Generator().manual_seed(1)
    i = model.encode_images(torch.rand(2, 3, model.image_size, model.image_size, generator=g) * 2 - 1)
    fused = model.fuse(
        t, i, ["Casual Shoes", "never-seen type"], torch.tensor([True, True]), torch.tensor([True, False])
    )
    assert torch.allclose(fused.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.equal(fused[1], t[1])  # no image -> exactly the title embedding
    q = model.encode_texts(["black casual shoes for men", "black casual shoes for men"])
    cos, prob = model.relevance(q, fused)
    assert cos.shape == (2,) and prob.shape == (2,)
    assert bool(((prob >= 0) & (prob <= 1)).all())
    assert torch.allclose(cos, (q * fused).sum(-1), atol=1e-5)
    labels = {model.label(p) for p in (0.0, 0.3, 0.6, 0.99)}
    assert labels <= {s.value for s in ScoreLabel}
    assert model.label(0.0) == "irrelevant" and model.label(1.0) == "exact"


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = Head(["Shoes", "Tshirts"], fusion="type_gate")
    with torch.no_grad():
        head.fusion.type_bias.weight.normal_()
    cal = Calibration(a=12.5, b=-6.0, thresholds=[0.2, 0.4, 0.9])
    version = save_head(tmp_path, head, cal, 128, extra={"metrics": {"ndcg10": 0.5}})
    assert (tmp_path / "head.pt").stat().st_size < 3_000_000
    head2, cal2, meta = load_head(tmp_path)
    assert cal2 == cal and meta["metrics"] == {"ndcg10": 0.5} and meta["version"] == version
    s1, s2 = head.state_dict(), head2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert version_for(meta["weights_sha256"], meta) == version and version.startswith("querylife-v2-")
    # a refit of the calibration alone is a new version: a name never answers with other labels
    refit = save_calibration(tmp_path, Calibration(a=12.5, b=-6.0, thresholds=[0.2, 0.5, 0.9]))
    assert refit != version and load_head(tmp_path)[2]["version"] == refit
    assert save_calibration(tmp_path, cal) == version  # the same calibration, the same name
    # tampered weights are refused
    state = torch.load(tmp_path / "head.pt", weights_only=True)
    state["logit_scale.value"] = state["logit_scale.value"] + 1
    torch.save(state, tmp_path / "head.pt")
    with pytest.raises(ValueError, match="sha256"):
        load_head(tmp_path)


def test_committed_head_is_small() -> None:
    weights = Path(__file__).resolve().parents[1] / "querylife" / "weights" / "head.pt"
    assert weights.stat().st_size < 3_000_000


def test_image_adapter_head_starts_linear_round_trips_and_serves(tmp_path: Path) -> None:
    """The adapter lives inside image_proj, so the served image encoder runs it with no other change."""
    torch.manual_seed(0)
    plain = Head(["Shoes"], fusion="type_gate")
    torch.manual_seed(0)
    adapted = Head(["Shoes"], fusion="type_gate", image_adapter=32)
    feats = torch.randn(4, 1280)
    adapted.eval()
    assert torch.allclose(adapted.image_proj(feats), plain.image_proj(feats))  # zero-initialised residual
    with torch.no_grad():
        for p in adapted.image_proj.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_head(tmp_path, adapted, Calibration(a=10.0, b=-5.0, thresholds=[0.2, 0.4, 0.9]), 128)
    head2, _, meta = load_head(tmp_path)
    assert meta["head_config"]["image_adapter"] == 32
    assert torch.equal(head2.image_proj(feats), adapted.image_proj(feats))
    served = load_model(tmp_path)
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        trunk = served.towers.image_features(pixels).clone()
        expected = torch.nn.functional.normalize(adapted.image_proj(trunk), dim=-1)
    assert torch.allclose(served.encode_images(pixels), expected, atol=1e-5)
