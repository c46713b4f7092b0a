import pytest
import torch

from retrieval import functional as RF
from retrieval.pooling import POOLINGS, RMAC, GeM, build_pooling
from retrieval.registry import UnknownNameError


@pytest.fixture
def fmap() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(3, 16, 7, 9)


def test_gem_with_p1_is_average_pooling(fmap):
    torch.testing.assert_close(RF.gem(fmap, 1.0), fmap.mean(dim=(-2, -1)), rtol=1e-5, atol=1e-5)


def test_gem_with_large_p_approaches_max_pooling(fmap):
    assert torch.allclose(RF.gem(fmap, 200.0), RF.mac(fmap), atol=0.03)


def test_mac_and_spoc_are_max_and_mean(fmap):
    torch.testing.assert_close(RF.mac(fmap), fmap.amax(dim=(-2, -1)))
    torch.testing.assert_close(RF.spoc(fmap), fmap.mean(dim=(-2, -1)))


@pytest.mark.parametrize("pool", ["mac", "spoc", "gem"])
def test_mask_restricts_pooling_to_the_masked_region(fmap, pool):
    mask = torch.zeros(3, 1, 7, 9)
    mask[:, :, 2:5, 3:8] = 1
    crop = fmap[:, :, 2:5, 3:8]
    fn = getattr(RF, pool)
    torch.testing.assert_close(fn(fmap, mask=mask), fn(crop), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["mac", "spoc", "gem", "rmac"])
def test_empty_mask_falls_back_to_whole_image(fmap, pool):
    fn = getattr(RF, pool)
    torch.testing.assert_close(fn(fmap, mask=torch.zeros(3, 1, 7, 9)), fn(fmap))


def test_mask_at_pixel_resolution_is_resized_to_the_feature_map(fmap):
    mask = torch.zeros(3, 1, 70, 90)
    mask[:, :, 20:50, 30:80] = 1
    torch.testing.assert_close(RF.spoc(fmap, mask=mask), RF.spoc(fmap[:, :, 2:5, 3:8]), rtol=1e-5, atol=1e-5)


def test_rmac_regions_include_the_largest_square_and_stay_inside():
    for h, w in [(7, 7), (7, 12), (12, 7), (3, 20), (1, 1)]:
        regions = RF.rmac_regions(h, w, 3)
        assert any(rh == min(h, w) for _, _, rh, _ in regions)
        for y0, x0, rh, rw in regions:
            assert 0 <= y0 and y0 + rh <= h and 0 <= x0 and x0 + rw <= w
        assert len(regions) == len(set(regions))


def test_rmac_level_counts_on_a_square_map():
    # 1 + 4 + 9 regions on a square map large enough that none coincide.
    assert len(RF.rmac_regions(12, 12, 3)) == 14


def test_rmac_is_unit_norm_and_identity_whitening_changes_nothing(fmap):
    out = RF.rmac(fmap, 3)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    same = RF.rmac(fmap, 3, region_shift=torch.zeros(16), region_proj=torch.eye(16))
    torch.testing.assert_close(same, out)


def test_rmac_region_whitening_sets_the_output_dimension(fmap):
    out = RF.rmac(fmap, 2, region_shift=torch.zeros(16), region_proj=torch.randn(5, 16))
    assert out.shape == (3, 5)


def test_rmac_is_sum_of_normalised_region_maxima(fmap):
    regs = RF.rmac_region_descriptors(fmap, 2)
    torch.testing.assert_close(RF.rmac(fmap, 2), RF.l2n(regs.sum(dim=1)))


def test_gem_p_is_learnable(fmap):
    pool = GeM(3.0)
    pool(fmap.requires_grad_()).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs() > 0


def test_rmac_region_whitening_is_learnable(fmap):
    pool = RMAC(2)
    pool.set_region_whitening(torch.zeros(16), torch.eye(16))
    pool(fmap).sum().backward()
    assert pool.region_proj.grad is not None


def test_pooling_registry_builds_each_and_names_the_known_ones():
    assert set(POOLINGS.names()) == {"mac", "spoc", "gem", "rmac"}
    assert isinstance(build_pooling("gem", gem_p=4.0), GeM)
    with pytest.raises(UnknownNameError, match="known: gem, mac, rmac, spoc"):
        build_pooling("avg")


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        POOLINGS.register("gem")(GeM)
