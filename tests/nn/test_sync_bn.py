"""train.sync_bn: every private BN group becomes a SyncBatchNorm (CUDA only; on CPU the
conversion is checked here and the trainer refuses with a clear message)."""

import pytest
import torch
from torch import nn

from rsvision.engine import train
from rsvision.errors import UserError
from rsvision.models import build_model
from rsvision.nn.switchable import SwitchableBatchNorm, at_resolution


def test_every_group_converts_and_interpolation_still_works(tiny_recipe):
    torch.manual_seed(0)
    model = build_model(tiny_recipe)
    for m in model.modules():  # distinct statistics per group, so interpolation shows
        if isinstance(m, SwitchableBatchNorm):
            for k, g in m.groups.items():
                g.running_mean.fill_(int(k) / 10)
                g.running_var.fill_(int(k) / 8)
    model.eval()
    x = torch.randn(2, 3, 14, 14)
    expected = {r: model(torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(r))) for r in (16, 12)}
    with at_resolution(model, 14):
        interpolated = model(x)

    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    switchable = [m for m in synced.modules() if isinstance(m, SwitchableBatchNorm)]
    assert switchable
    for m in switchable:
        assert sorted(m.groups) == ["12", "16", "8"]
        assert all(type(g) is nn.SyncBatchNorm for g in m.groups.values())
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in synced.modules())
    for r, z in expected.items():
        torch.testing.assert_close(synced(torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(r))), z)
    with at_resolution(synced, 14):
        torch.testing.assert_close(synced(x), interpolated)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_sync_bn_on_cpu_is_a_user_error(tiny_recipe):
    tiny_recipe.train.sync_bn = True
    with pytest.raises(UserError, match="SyncBatchNorm runs on CUDA only"):
        train(tiny_recipe, quiet=True)
