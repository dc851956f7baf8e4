"""Attention prunes its model dim exactly: nn.MultiheadAttention as
self-attention reads the model dim through in_proj and writes it through
out_proj (graphprune/attention.py); its heads stay whole."""

import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torchvision.models.vision_transformer import VisionTransformer

import graphprune
from graphprune.attention import CompactMultiheadAttention
from graphprune.onnx_export import export_onnx


def small_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5)
    with torch.no_grad():  # torchvision starts these at zero, which would make every output 0
        model.encoder.pos_embedding.normal_(0, 0.5)
        model.class_token.normal_(0, 0.5)
        model.heads.head.weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def vit():
    model, x = small_vit(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, x, {mode: graphprune.prune(model, x, ratio=0.5, mode=mode) for mode in ("per_layer", "group")}


@pytest.mark.parametrize("mode", ["per_layer", "group"])
def test_vision_transformer_residual_stream_and_mlp_are_pruned_exactly(vit, mode):
    model, x, results = vit
    result = results[mode]
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    assert report.prunable_fraction > 0.95  # all but the classifier's outputs
    attention = result.compact.encoder.layers[0].self_attention
    assert isinstance(attention, CompactMultiheadAttention)
    width = attention.in_proj_weight.shape[1]
    assert width < 32 and attention.head_dim == 16 and attention.out_proj.weight.shape == (width, 32)
    assert result.compact.encoder.pos_embedding.shape == (1, 17, width)
    assert result.compact.class_token.shape == (1, 1, width)
    assert "encoder.layers.encoder_layer_0.self_attention" in report.replaced
    # its forward reshapes to self.hidden_dim: rebuilt, still a VisionTransformer
    assert isinstance(result.compact, VisionTransformer) and "" in report.replaced
    assert list(result.compact.state_dict()) == list(model.state_dict())
    assert report.params_after == sum(p.numel() for p in result.compact.parameters()) < report.params_before
    fresh = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert expected.abs().max() > 0.1  # a real output, not the zeros of an untrained head
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max() + 1e-6


def test_pruned_vision_transformer_runs_on_onnxruntime(vit, tmp_path):
    _, x, results = vit
    compact = results["group"].compact
    info = export_onnx(compact, x, tmp_path / "vit.onnx")
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.randn(3, 3, 32, 32)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, compact(batch), atol=1e-4)
    assert info.max_abs_error <= 1e-4


class Attend(nn.Module):
    """Self-attention with its weights returned (the explicit path), and a
    cross-attention whose keys come from elsewhere (pinned)."""

    def __init__(self, cross: bool):
        super().__init__()
        self.cross = cross
        self.inp, self.other = nn.Linear(6, 16), nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=False)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        if self.cross:
            kv = self.other(x)
            y, _ = self.attn(h, kv, kv)
        else:
            y, weights = self.attn(h, h, h)  # need_weights=True
            y = y * weights.mean()
        return self.out(torch.relu(y))


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_multihead_attention_with_weights_prunes_and_cross_attention_is_pinned(cross):
    torch.manual_seed(3)
    model = Attend(cross).eval()
    result = graphprune.prune(model, torch.randn(5, 2, 6), ratio=0.5)
    assert result.report.exact
    if cross:
        assert result.compact.inp.out_features == 16 and isinstance(result.compact.attn, nn.MultiheadAttention)
        assert any("no channel rule" in reason for reason in result.report.pinned)
    else:
        assert isinstance(result.compact.attn, CompactMultiheadAttention)
        assert result.compact.inp.out_features == 8 and result.compact.out.in_features == 8
    x = torch.randn(7, 3, 6)
    with torch.no_grad():
        assert torch.allclose(result.compact(x), result.masked(x), atol=1e-5)
