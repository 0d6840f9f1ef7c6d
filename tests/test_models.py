import pytest
import torch
from torch import nn

from harness import contract
from harness.errors import ConfigError
from harness.models import resnet
from harness.models.resnet import CifarResNet, count_convs, count_parameters

from conftest import compose_config


@pytest.mark.parametrize("depth, expected", [(20, 269_722), (56, 853_018)])
@pytest.mark.parametrize("residual", [True, False])
def test_parameter_counts_match_he_et_al(depth, expected, residual):
    assert count_parameters(CifarResNet(depth, residual=residual, shortcut="A")) == expected


@pytest.mark.parametrize("depth", [8, 20, 56])
def test_conv_layers_are_depth_minus_one(depth):
    # depth counts the convs plus the classifier
    assert count_convs(CifarResNet(depth)) == depth - 1
    # option B adds a 1x1 projection where stages 2 and 3 downsample
    assert count_convs(CifarResNet(depth, shortcut="B")) == depth - 1 + 2


@pytest.mark.parametrize("depth", [7, 9, 21, 0, -4, "20", 20.0, True])
def test_depth_not_6n_plus_2_is_refused(depth):
    with pytest.raises(ValueError, match=rf"depth {depth!r} is not 6n \+ 2"):
        CifarResNet(depth)


def _zero_last_branch_conv(model):
    block = model.stage1.block1
    with torch.no_grad():
        block.conv2.weight.zero_()
        if block.conv2.bias is not None:
            block.conv2.bias.zero_()
    return block


@pytest.mark.parametrize("batchnorm", [True, False])
def test_residual_block_passes_its_input_when_the_branch_is_zeroed(batchnorm):
    torch.manual_seed(0)
    model = CifarResNet(8, residual=True, batchnorm=batchnorm).eval()
    block = _zero_last_branch_conv(model)
    if batchnorm:
        nn.init.zeros_(block.bn2.bias)
    x = torch.relu(torch.randn(4, 16, 8, 8))  # a post-ReLU activation, as blocks receive
    assert torch.allclose(block(x), x)


def test_plain_block_has_no_shortcut():
    torch.manual_seed(0)
    model = CifarResNet(8, residual=False, batchnorm=False).eval()
    block = _zero_last_branch_conv(model)
    x = torch.relu(torch.randn(4, 16, 8, 8))
    assert torch.count_nonzero(block(x)) == 0  # nothing survives but the (zeroed) branch


def test_plain_and_residual_differ_only_by_the_shortcut():
    torch.manual_seed(0)
    residual = CifarResNet(14, residual=True).eval()
    plain = CifarResNet(14, residual=False).eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(residual(x), plain(x))


def test_batchnorm_false_has_no_batchnorm_and_conv_biases():
    model = CifarResNet(20, batchnorm=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert any(isinstance(m, nn.BatchNorm2d) for m in CifarResNet(20).modules())


def test_option_a_downsampling_zero_pads_channels():
    model = CifarResNet(8).eval()
    shortcut = model.stage2.block1.shortcut
    x = torch.randn(2, 16, 32, 32)
    out = shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0


def test_width_multiplies_filters():
    assert CifarResNet(8, width=2).fc.in_features == 128


def test_fixup_starts_every_branch_and_the_classifier_at_zero():
    torch.manual_seed(0)
    model = CifarResNet(20, batchnorm=False, init="fixup")
    x = torch.randn(2, 3, 32, 32)
    assert torch.count_nonzero(model(x)) == 0  # zero classifier: logits 0, uniform prediction
    block = model.stage2.block2
    h = torch.relu(torch.randn(2, 32, 16, 16))
    assert torch.allclose(block(h), h)  # identity residual block at init
    with pytest.raises(ConfigError, match="Fixup"):  # the family's rule: the constructor trusts it
        resnet.check(compose_config("model.init=fixup", "model.residual=false").model)


def test_models_train_one_step_without_batchnorm():
    torch.manual_seed(0)
    for init in ("kaiming", "fixup"):
        model = CifarResNet(8, batchnorm=False, init=init)
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("downsample", ["stride", "maxpool", "avgpool", "blurpool", "none"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_each_downsampling_keeps_the_parameters_and_halves_where_it_should(downsample, shortcut):
    model = CifarResNet(8, downsample=downsample, shortcut=shortcut, padding="circular").eval()
    sizes = []
    hooks = [getattr(model, f"stage{s}").register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for s in (1, 2, 3)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for hook in hooks:
        hook.remove()
    assert sizes == ([32, 32, 32] if downsample == "none" else [32, 16, 8])
    # pooling has no parameters: every variant has the strided net's (shortcut B: its 1x1 convs)
    assert count_parameters(model) == count_parameters(CifarResNet(8, shortcut=shortcut))


def test_blurpool_is_a_binomial_low_pass_then_every_second_pixel():
    from harness.models.resnet import BlurPool

    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 16.0
    out = BlurPool(1, "zeros")(x)
    assert out.shape == (1, 1, 4, 4)
    # the impulse at (4, 4) lands on output (2, 2) with weight 4/16 of 16, neighbours 2 and 1 away
    assert out[0, 0, 2, 2].item() == 4.0 and out[0, 0].sum().item() == 4.0


def test_dropout_is_active_in_training_only():
    model = CifarResNet(8, dropout=0.5, block_dropout=0.3)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    assert not torch.allclose(a, model(x))
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1 + 3  # classifier, one per block


def test_the_resnet_family_declares_the_labels_analysis_falls_back_to():
    assert resnet.LABELS == contract.RESNET_LABELS
