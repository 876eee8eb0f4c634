import torch
import torch.nn.functional as F

from querylife.fusion import Fusion, per_type_weights


def _inputs(n: int = 6, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(
        torch.randn(n, d, generator=g), dim=-1
    )


def test_missing_modality_fallback_is_exact() -> None:
    for kind in ("type_gate", "gate", "mean", "concat"):
        fus = Fusion(kind, 16, ["Shoes", "Tshirts"])
        t, i = _inputs()
        has_t = torch.tensor([True, False, True, True, False, True])
        has_i = torch.tensor([False, True, True, True, True, True])
        ids = fus.type_ids(["Shoes", "Tshirts", "Shoes", "???", "Shoes", "Tshirts"])
        out = fus(t, i, ids, has_t, has_i)
        assert torch.equal(out[0], t[0]) and torch.equal(out[1], i[1]) and torch.equal(out[4], i[4])
        assert torch.allclose(out.norm(dim=-1), torch.ones(6), atol=1e-6)


def test_weights_sum_to_one_and_masked_weight_is_zero() -> None:
    fus = Fusion("type_gate", 16, ["A", "B"])
    with torch.no_grad():
        for p in fus.gate.parameters():
            p.normal_(0, 0.5)
    t, i = _inputs()
    ids = fus.type_ids(["A", "B", "A", "B", "A", "B"])
    has_t = torch.tensor([True, True, False, True, True, True])
    has_i = torch.tensor([True, False, True, True, True, True])
    w = fus.weights(t, i, ids, has_t, has_i).detach()
    assert torch.allclose(w.sum(-1), torch.ones(6), atol=1e-6)
    assert float(w[1, 1]) == 0.0 and float(w[1, 0]) == 1.0
    assert float(w[2, 0]) == 0.0 and float(w[2, 1]) == 1.0
    # starts different from 0.5 once the gate has weights
    assert not torch.allclose(w[3:], torch.full_like(w[3:], 0.5))


def test_unknown_type_maps_to_unk_and_init_is_mean_fusion() -> None:
    fus = Fusion("type_gate", 16, ["A", "B"])
    assert fus.type_vocab[0] == "<unk>"
    assert fus.type_ids(["zzz", None, "B"]).tolist() == [0, 0, 2]
    t, i = _inputs(3)
    ones = torch.ones(3, dtype=torch.bool)
    w = fus.weights(t, i, fus.type_ids(["A", "zzz", "B"]), ones, ones)
    assert torch.allclose(w, torch.full((3, 2), 0.5))  # zero-initialised last layer


def test_per_type_weights_learn_which_modality_matters() -> None:
    """Toy task: for type 'shoe' the image identifies the item, for 'case' the title does."""
    torch.manual_seed(0)
    d, n = 16, 64
    fus = Fusion("type_gate", d, ["shoe", "case"], type_dim=8, hidden=16)
    opt = torch.optim.Adam(fus.parameters(), lr=0.05)
    types = ["shoe"] * (n // 2) + ["case"] * (n // 2)
    ids = fus.type_ids(types)
    ones = torch.ones(n, dtype=torch.bool)
    for _ in range(60):
        target = F.normalize(torch.randn(n, d), dim=-1)
        noise = F.normalize(torch.randn(n, d), dim=-1)
        is_shoe = (ids == fus.type_ids(["shoe"])[0]).view(-1, 1)
        image = torch.where(is_shoe, target, noise)
        title = torch.where(is_shoe, noise, target)
        fused = fus(title, image, ids, ones, ones)
        loss = F.cross_entropy(10 * fused @ target.t(), torch.arange(n))
        opt.zero_grad()
        loss.backward()
        opt.step()
    target = F.normalize(torch.randn(n, d), dim=-1)
    noise = F.normalize(torch.randn(n, d), dim=-1)
    is_shoe = (ids == fus.type_ids(["shoe"])[0]).view(-1, 1)
    w = per_type_weights(fus, torch.where(is_shoe, noise, target), torch.where(is_shoe, target, noise), types)
    assert set(w) == {"shoe", "case"}
    assert w["shoe"][1] > 0.8 and w["case"][0] > 0.8
    assert abs(sum(w["shoe"]) - 1) < 1e-6
