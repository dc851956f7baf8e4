"""Attention prunes exactly: nn.MultiheadAttention as self-attention reads
the model dim through in_proj and writes it through out_proj
(graphprune/attention.py), its heads whole; attention written with
F.scaled_dot_product_attention or matmuls also prunes its head dims, the
same positions in every head, at the original scale (rules/contraction.py),
or with heads="whole" drops whole heads, the head dim kept."""

import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from helpers import AttentionNet
from torchvision.models.vision_transformer import VisionTransformer

import graphprune
from graphprune.attention import CompactMultiheadAttention
from graphprune.flops import count_flops
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


def small_swin(v2: bool):
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    kw = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           num_classes=5, **kw).eval()


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_swin_window_attention_and_patch_merging_are_pruned_exactly(v2, tmp_path):
    from graphprune.attention import CompactWindowAttention

    model = small_swin(v2)
    x = torch.randn(2, 3, 36, 36)  # 9x9 tokens: windows padded, shifted windows masked
    result = graphprune.prune(model, x, ratio=0.5, mode="group")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    assert report.prunable_fraction > 0.99 and report.params_after < 0.6 * report.params_before
    block = result.compact.features[1][1]  # a shifted block of the first stage
    assert isinstance(block.attn, CompactWindowAttention) and block.attn.shift_size == [2, 2]
    width = block.attn.qkv.weight.shape[1]
    assert width < 24 and block.attn.proj.weight.shape[0] == width
    assert result.compact.features[2].reduction.in_features == 4 * width  # patch merging: 4 phases of the stream
    assert list(result.compact.state_dict()) == list(model.state_dict())
    fresh = torch.randn(3, 3, 36, 36)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()
    info = export_onnx(result.compact, x, tmp_path / "swin.onnx")
    assert info.max_abs_error <= 1e-4


def test_window_attention_equals_torchvisions_at_full_width():
    from torchvision.models.swin_transformer import shifted_window_attention as torchvision_attention

    from graphprune.attention import shifted_window_attention

    g = torch.Generator().manual_seed(2)
    for (h, w, shift), logit in [((14, 14, [3, 3]), None), ((10, 9, [3, 3]), None), ((10, 9, [3, 3]), 2.0),
                                 ((4, 4, [3, 3]), None)]:
        x, qkv, proj = torch.randn(2, h, w, 24, generator=g), torch.randn(72, 24, generator=g), torch.randn(24, 24, generator=g)
        bias, qkv_bias, proj_bias = torch.randn(1, 3, 49, 49, generator=g), torch.randn(72, generator=g), torch.randn(24, generator=g)
        scale = None if logit is None else torch.full((3, 1, 1), logit)
        args = (x, qkv, proj, bias, [7, 7], 3)
        kwargs = dict(shift_size=shift, qkv_bias=qkv_bias, proj_bias=proj_bias, logit_scale=scale, training=False)
        assert torch.allclose(shifted_window_attention(*args, **kwargs), torchvision_attention(*args, **kwargs),
                              rtol=0, atol=1e-4)


def test_a_model_whose_outputs_are_all_zero_is_said_to_prove_little():
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5).eval()  # torchvision's head starts at zero
    result = graphprune.prune(model, torch.randn(1, 3, 32, 32))
    assert any("outputs are all zero" in note for note in result.report.notes)


def test_maxvit_relative_attention_is_pruned_exactly():
    from torchvision.models.maxvit import MaxVit

    from graphprune.attention import CompactRelativeAttention

    torch.manual_seed(0)
    model = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                   block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=5).eval()
    result = graphprune.prune(model, torch.randn(2, 3, 32, 32), ratio=0.5, mode="group")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    assert report.prunable_fraction > 0.99
    attention = result.compact.blocks[0].layers[0].layers.window_attention.attn_layer[1]
    assert isinstance(attention, CompactRelativeAttention)
    width = attention.to_qkv.weight.shape[1]
    assert width < 16 and attention.merge.weight.shape == (width, 16)  # two heads of 8 stay whole
    fresh = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
def test_timm_vision_transformer_prunes_its_stream_and_head_dims_exactly(fused, tmp_path):
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(0)
    model = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    for block in model.blocks:
        block.attn.fused_attn = fused  # F.scaled_dot_product_attention, or q @ k^T ... @ v written out
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        model.pos_embed.normal_(0, 0.5)  # read before the tokens it is added to are computed
    result = graphprune.prune(model, torch.randn(2, 3, 32, 32), ratio=0.5, mode="group")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    assert report.prunable_fraction > 0.95  # all but the classifier's outputs
    width = result.compact.patch_embed.proj.out_channels
    assert width < 32 and result.compact.pos_embed.shape == (1, 17, width)
    attn = result.compact.blocks[0].attn
    assert attn.qkv.in_features == width and isinstance(model, timm.models.VisionTransformer)
    # every head keeps the same dims of q, k and v: 3 x 2 heads x d' rows, d' < 16
    head_dim = attn.proj.in_features // 2
    assert head_dim < 16 and attn.qkv.out_features == 3 * 2 * head_dim
    fresh = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()
    export_onnx(result.compact, fresh, tmp_path / "vit.onnx")
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: fresh.numpy()})[0])
    assert (onnx_out - got).abs().max() <= 1e-4 * got.abs().max()


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "matmul"])
def test_hand_written_attention_keeps_the_original_scale_when_its_head_dims_are_pruned(sdpa):
    torch.manual_seed(0)
    model = AttentionNet(sdpa).eval().sharpened()  # a scale off by sqrt(2) shows
    x = torch.randn(2, 5, 6)
    result = graphprune.prune(model, x, ratio=0.5, mode="per_layer")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    attn, width = result.compact.attn, result.compact.embed.out_features
    head_dim = attn.proj.in_features // 2
    assert width < 16 and head_dim < 8 and attn.qkv.weight.shape == (3 * 2 * head_dim, width)
    assert "attn" in report.replaced  # its forward holds the head dim and the scale
    fresh = torch.randn(4, 5, 6)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
        assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()
        # the scale is the original's, 1/sqrt(8): the compact head dim's would give other outputs
        tokens = result.compact.norm(result.compact.embed(fresh))
        q, k, v = attn.qkv(tokens).reshape(4, 5, 3, 2, head_dim).permute(2, 0, 3, 1, 4)
        sdpa = nn.functional.scaled_dot_product_attention
        assert (sdpa(q, k, v) - sdpa(q, k, v, scale=8 ** -0.5)).abs().max() > 1e-2


def test_attention_whose_output_alone_is_pruned_is_made_compact():
    class Net(nn.Module):  # the input is the model's (pinned); out_proj's rows are pruned
        def __init__(self):
            super().__init__()
            self.attn, self.fc = nn.MultiheadAttention(16, 2, batch_first=True), nn.Linear(16, 3)

        def forward(self, x):
            y, _ = self.attn(x, x, x, need_weights=False)
            return self.fc(torch.relu(y))

    torch.manual_seed(0)
    result = graphprune.prune(Net().eval(), torch.randn(2, 5, 16), ratio=0.5)
    assert result.report.exact
    assert isinstance(result.compact.attn, CompactMultiheadAttention)
    assert result.compact.attn.out_proj.weight.shape == (8, 16) and result.compact.fc.in_features == 8


def test_the_export_frontend_rebuilds_a_forward_that_computes_sizes_the_graph_holds_as_constants():
    """torch.export holds the width the forward reads from its input's shape (``c // heads``) as a constant.
    qkv keeps its outputs, so no constant in the graph changes, but its input narrows: the user's forward
    would compute another head dim. The compact model runs beside the compact graph, and the attention
    block, where they part, is rebuilt from the graph."""
    from graphprune.passes.apply import REBUILT_WHY
    from graphprune.tracing import CALLS_KEY

    torch.manual_seed(0)
    model = AttentionNet(True).eval()
    model.attn.drop = nn.Dropout(0.1)  # what an exported (eval-mode) graph has no trace of
    result = graphprune.prune(model, torch.randn(2, 5, 6), ratio=0.5, mode="group",
                              ratios={"attn.qkv": 0.0}, frontend="export")
    assert result.report.exact
    assert any(n.startswith("attn was rebuilt from the exported graph") and "without its dropout" in n
               for n in result.report.notes)
    assert result.compact.attn.qkv.weight.shape == (48, 8)  # the input narrowed, the outputs kept
    assert REBUILT_WHY in result.state.replaced["attn"]
    # its call is known although torch.export reads the batch size once, outside it, and passes it in
    assert any(c.path == "attn" and len(c.args) == 1 for c in result.state.graph.meta[CALLS_KEY])
    fresh = torch.randn(3, 5, 6)  # another batch size: the rebuilt forward reads it from its input
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()


def test_an_unverified_compile_never_returns_a_model_that_fails_to_run():
    from graphprune.errors import VerificationError
    from graphprune.pipeline import Pipeline

    class Break:  # a pass that leaves a compact model whose head no longer fits its input
        name, requires, provides = "break", ("compact",), ()

        def __call__(self, state):
            state.compact.head.weight = nn.Parameter(torch.zeros(3, 5))

    pipeline = Pipeline.default().insert_after("apply", Break())
    with pytest.raises(VerificationError, match="fails to run on the example inputs"):
        graphprune.prune(AttentionNet(True).eval(), torch.randn(2, 5, 6), ratio=0.5, verify=False, pipeline=pipeline)
    result = graphprune.prune(AttentionNet(True).eval(), torch.randn(2, 5, 6), ratio=0.5, verify=False)
    assert result.report.verification is None and result.compact.attn.qkv.out_features < 48


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "matmul"])
def test_whole_heads_are_dropped_with_their_q_k_v_rows_and_the_head_dim_kept(sdpa):
    torch.manual_seed(0)
    model = AttentionNet(sdpa, heads=4).eval().sharpened()  # four heads of 4 dims
    with torch.no_grad():
        model.attn.qkv.weight.view(3, 4, 4, 16)[:, 1].mul_(0.1)  # head 1 is the weakest by L1
    x = torch.randn(2, 5, 6)
    result = graphprune.prune(model, x, ratio=0.5, mode="group", heads="whole")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    dropped, total = report.heads["attn"]
    assert total == 4 and len(dropped) == 2 and 1 in dropped
    assert f"heads:    attn: dropped 2 of 4: {list(dropped)}" in str(report)
    kept = [h for h in range(4) if h not in dropped]
    compact = result.compact.attn
    # the kept heads' rows of q, k and v, whole (4 dims each), in order; the head dim is still 4
    rows = torch.tensor([part * 16 + h * 4 + j for part in range(3) for h in kept for j in range(4)])
    assert torch.equal(compact.qkv.weight, model.attn.qkv.weight[rows][:, result.plan.kept_indices("embed.weight")])
    assert compact.proj.in_features == 8
    masked_rows = result.masked.attn.qkv.weight.view(3, 4, 4, -1)
    assert not masked_rows[:, list(dropped)].any() and masked_rows[:, kept].abs().sum() > 0
    fresh = torch.randn(4, 5, 6)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()


def test_timm_vision_transformer_drops_whole_heads_exactly(tmp_path):
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(0)
    from timm.layers import drop_path

    class WithDropPath(nn.Module):  # stochastic depth traced through: training mode traces another graph
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x):
            return drop_path(self.model(x), 0.1, self.training)

    vit = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5, drop_path_rate=0.1)
    with torch.no_grad():
        vit.head.weight.normal_(0, 0.5)
        vit.pos_embed.normal_(0, 0.5)
    model = WithDropPath(vit).eval()
    result = graphprune.prune(model, torch.randn(2, 3, 32, 32), ratio=0.5, mode="group", heads="whole")
    assert result.state.train_graph is not None  # whose heads are the same ones, listed once
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    assert report.prunable_fraction > 0.95
    assert set(report.heads) == {"model.blocks.0.attn", "model.blocks.1.attn"}
    for i, (dropped, total) in enumerate(report.heads[f"model.blocks.{b}.attn"] for b in (0, 1)):
        attn = result.compact.model.blocks[i].attn
        assert total == 4 and len(dropped) == 2 and attn.qkv.out_features == 3 * 2 * 8  # 2 heads of 8 dims
    fresh = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = result.compact(fresh)
    export_onnx(result.compact, fresh, tmp_path / "vit_heads.onnx")
    session = ort.InferenceSession(str(tmp_path / "vit_heads.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: fresh.numpy()})[0])
    assert (onnx_out - got).abs().max() <= 1e-4 * got.abs().max()


def test_heads_must_be_dims_or_whole():
    with pytest.raises(graphprune.ConfigError, match="heads must be one of dims, whole; got 'all'"):
        graphprune.prune(AttentionNet(True).eval(), torch.randn(2, 5, 6), heads="all")


def test_multihead_attention_drops_whole_heads_exactly(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                              num_classes=5)
    with torch.no_grad():
        model.encoder.pos_embedding.normal_(0, 0.5)
        model.class_token.normal_(0, 0.5)
        model.heads.head.weight.normal_(0, 0.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    result = graphprune.prune(model, x, ratio=0.5, mode="group", heads="whole")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    path = "encoder.layers.encoder_layer_0.self_attention"
    dropped, total = report.heads[path]
    assert total == 4 and len(dropped) == 2
    attention = result.compact.encoder.layers[0].self_attention
    assert isinstance(attention, CompactMultiheadAttention) and attention.num_heads == 2
    assert attention.head_dim == 8 and attention.in_proj_weight.shape[0] == 3 * 2 * 8
    assert attention.out_proj.weight.shape[1] == 16
    kept = [h for h in range(4) if h not in dropped]
    rows = torch.tensor([part * 32 + h * 8 + j for part in range(3) for h in kept for j in range(8)])
    columns = result.plan.kept_indices(f"{path}.in_proj_weight", 1)
    assert torch.equal(attention.in_proj_weight, model.encoder.layers[0].self_attention.in_proj_weight[rows][:, columns])
    fresh = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()
    export_onnx(result.compact, fresh, tmp_path / "vit_heads.onnx")


def test_attention_flops_are_counted_and_predicted_in_both_head_modes(vit):
    """The counter sees nn.MultiheadAttention's products (its fused inference
    kernel hides them) and SDPA on the CPU; the report's prediction agrees."""
    layer, x = nn.MultiheadAttention(64, 4, batch_first=True).eval(), torch.randn(2, 10, 64)
    projections, attention = 2 * 20 * 64 * (3 * 64) + 2 * 20 * 64 * 64, 2 * (2 * 2 * 4 * 10 * 10 * 16)
    assert count_flops(layer, (x, x, x)) == projections + attention
    model, x, results = vit
    for result in (*results.values(), graphprune.prune(model, x, ratio=0.5, mode="group", heads="whole")):
        assert result.report.flops_before == count_flops(model, (x,))
        assert result.report.flops_after == count_flops(result.compact, (x,)) < result.report.flops_before


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_swin_drops_whole_heads_with_their_position_bias(v2):
    from graphprune.attention import CompactWindowAttention

    model = small_swin(v2)
    for block in model.modules():  # position biases that differ per head, so a wrong head shows
        if hasattr(block, "relative_position_bias_table"):
            nn.init.normal_(block.relative_position_bias_table, 0, 1.0)
    x = torch.randn(2, 3, 36, 36)
    result = graphprune.prune(model, x, ratio=0.5, mode="group", heads="whole")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    path = "features.3.0.attn"  # the second stage: 4 heads of 12
    dropped, total = report.heads[path]
    assert total == 4 and len(dropped) == 2
    block, original = result.compact.features[3][0].attn, model.features[3][0].attn
    assert isinstance(block, CompactWindowAttention) and block.num_heads == 2
    kept = [h for h in range(4) if h not in dropped]
    rows = torch.tensor([part * 48 + h * 12 + j for part in range(3) for h in kept for j in range(12)])
    assert torch.equal(block.qkv.weight, original.qkv.weight[rows][:, result.plan.kept_indices(f"{path}.qkv.weight", 1)])
    if v2:
        assert torch.equal(block.logit_scale, original.logit_scale[kept])
        assert torch.equal(block.cpb_mlp[2].weight, original.cpb_mlp[2].weight[kept])
    else:
        assert torch.equal(block.relative_position_bias_table, original.relative_position_bias_table[:, kept])
    fresh = torch.randn(3, 3, 36, 36)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()


def test_maxvit_drops_whole_heads_with_their_position_bias():
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    model = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                   block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    result = graphprune.prune(model, x, ratio=0.5, mode="group", heads="whole")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    path = "blocks.1.layers.0.layers.grid_attention.attn_layer.1"  # 32 wide: 8 heads of 4
    dropped, total = report.heads[path]
    assert total == 8 and len(dropped) == 4
    attention = result.compact.get_submodule(path)
    kept = [h for h in range(8) if h not in dropped]
    assert attention.n_heads == 4 and attention.to_qkv.weight.shape[0] == 3 * 4 * 4
    assert torch.equal(attention.relative_position_bias_table,
                       model.get_submodule(path).relative_position_bias_table[:, kept])
    fresh = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = result.masked(fresh), result.compact(fresh)
    assert (expected - got).abs().max() <= 1e-5 * expected.abs().max()
