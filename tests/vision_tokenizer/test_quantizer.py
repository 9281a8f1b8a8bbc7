"""SimVQ: golden parity (incl. the blocked >32768-code search), loss/gradients, codebook cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from vision_tokenizer.models import quantizer as quantizer_module
from vision_tokenizer.models.quantizer import CODE_BLOCK, SimVQ, nearest_code_indices

from tests.conftest import golden_dir

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def simvq_io() -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir() / "simvq_io.safetensors"))


def _tiny_pixel_quantizer() -> SimVQ:
    state = load_file(str(golden_dir() / "dualvitok_tiny_state_dict.safetensors"))
    prefix = "pixel_quantizer."
    quantizer = SimVQ(dim=8, codebook_size=768).eval()
    quantizer.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return quantizer


def test_tiny_quantizer_matches_golden(simvq_io):
    quantizer = _tiny_pixel_quantizer()
    with torch.no_grad():
        quantized, loss, indices = quantizer(simvq_io["input"])
        codes = quantizer.indices_to_codes(indices)
    assert torch.equal(indices, simvq_io["indices"])
    torch.testing.assert_close(quantizer.codebook, simvq_io["implicit_codebook"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(quantized, simvq_io["quantized"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(loss.reshape(1), simvq_io["commit_loss"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(codes, simvq_io["indices_to_codes"], atol=ATOL, rtol=RTOL)


def test_blocked_search_matches_golden(simvq_io):
    quantizer = SimVQ(dim=4, codebook_size=40000).eval()
    quantizer.load_state_dict(
        {
            "frozen_codebook": simvq_io["big.frozen_codebook"],
            "code_transform.weight": simvq_io["big.code_transform.weight"],
        }
    )
    with torch.no_grad():
        quantized, loss, indices = quantizer(simvq_io["big.input"])
    assert torch.equal(indices, simvq_io["big.indices"])
    torch.testing.assert_close(quantized, simvq_io["big.quantized"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(loss.reshape(1), simvq_io["big.commit_loss"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        quantizer.indices_to_codes(indices), simvq_io["big.indices_to_codes"], atol=ATOL, rtol=RTOL
    )


def test_exact_tie_across_blocks_keeps_the_first_block():
    codebook = torch.randn(CODE_BLOCK + 100, 4)
    codebook[CODE_BLOCK + 7] = codebook[5]
    query = codebook[5:6].clone()
    assert nearest_code_indices(query, codebook).item() == 5


def test_row_chunking_does_not_change_indices(monkeypatch):
    torch.manual_seed(1)
    codebook, vectors = torch.randn(300, 8), torch.randn(1000, 8)
    whole = torch.cdist(vectors, codebook).argmin(dim=-1)
    monkeypatch.setattr(quantizer_module, "_MAX_DISTANCES_PER_CHUNK", 300 * 7)
    assert torch.equal(nearest_code_indices(vectors, codebook), whole)


def test_commit_loss_and_straight_through_gradients():
    torch.manual_seed(2)
    quantizer = SimVQ(dim=4, codebook_size=16).train()
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    quantized, loss, indices = quantizer(z)
    codes = quantizer.indices_to_codes(indices)
    torch.testing.assert_close(quantized, codes)
    # mse(sg z, q) + 0.25 mse(z, sg q): both terms have the same value.
    torch.testing.assert_close(loss, 1.25 * F.mse_loss(z, codes))

    (z_grad,) = torch.autograd.grad(loss, z, retain_graph=True)
    torch.testing.assert_close(z_grad, 0.25 * 2 * (z - codes) / z.numel())
    (st_grad,) = torch.autograd.grad(quantized.sum(), z)
    torch.testing.assert_close(st_grad, torch.ones_like(z))
    (w_grad,) = torch.autograd.grad(loss, quantizer.code_transform.weight)
    assert w_grad.abs().sum() > 0  # the first term trains the codebook transform


def test_codebook_cache_follows_weight_changes():
    quantizer = SimVQ(dim=4, codebook_size=32).eval()
    with torch.no_grad():
        first = quantizer.codebook
        assert quantizer.codebook is first  # cached while nothing changes
        quantizer.code_transform.weight.mul_(2)
        second = quantizer.codebook
    assert second is not first
    torch.testing.assert_close(second, 2 * first)
    quantizer.load_state_dict({"frozen_codebook": torch.zeros(32, 4), "code_transform.weight": torch.eye(4)})
    with torch.no_grad():
        assert torch.equal(quantizer.codebook, torch.zeros(32, 4))
    quantizer.train()
    assert quantizer.codebook.requires_grad  # training recomputes it inside the graph


def test_invalid_inputs_raise():
    quantizer = SimVQ(dim=4, codebook_size=8)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        quantizer.indices_to_codes(torch.tensor([[0, 8]]))
    with pytest.raises(ValueError, match="dim=4"):
        quantizer(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="rotation_trick"):
        SimVQ(dim=4, codebook_size=8, rotation_trick=True)
