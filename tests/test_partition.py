import numpy as np
import pytest

from fedlib.partition import PartitionError, class_counts, make_partition

LABELS = np.repeat(np.arange(10), 120)          # 1,200 samples, 10 balanced classes


def assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n, "a sample was dropped or duplicated"
    assert np.array_equal(np.sort(allidx), np.arange(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_sample_exactly_once(scheme):
    parts = make_partition(LABELS, scheme, 20, alpha=0.3, classes_per_client=3, min_client_size=5, seed=1)
    assert len(parts) == 20
    assert_exact_cover(parts, len(LABELS))


def test_iid_sizes_balanced():
    sizes = [len(p) for p in make_partition(LABELS, "iid", 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_min_size_and_determinism():
    a = make_partition(LABELS, "dirichlet", 30, alpha=0.1, min_client_size=8, seed=3)
    b = make_partition(LABELS, "dirichlet", 30, alpha=0.1, min_client_size=8, seed=3)
    assert min(len(p) for p in a) >= 8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_label_skew_grows_as_alpha_falls():
    """Mean per-client label entropy falls monotonically with alpha (averaged over seeds)."""
    def entropy(alpha):
        hs = []
        for seed in range(4):
            parts = make_partition(LABELS, "dirichlet", 10, alpha=alpha, min_client_size=1, seed=seed)
            p = class_counts(LABELS, parts, 10) / np.array([[len(q)] for q in parts])
            hs.append(np.mean(-(p * np.log(np.where(p > 0, p, 1))).sum(1)))
        return np.mean(hs)

    h = [entropy(a) for a in (100.0, 1.0, 0.1, 0.02)]
    assert all(x > y for x, y in zip(h, h[1:])), h
    assert h[0] > 2.2 and h[-1] < 0.5     # near-uniform (log 10 = 2.30) vs. near single-class


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_shards_exactly_gamma_classes(gamma):
    parts = make_partition(LABELS, "shards", 25, classes_per_client=gamma, seed=2)
    held = (class_counts(LABELS, parts, 10) > 0).sum(1)
    assert (held == gamma).all()


def test_impossible_settings_fail_clearly():
    with pytest.raises(PartitionError, match="min_client_size"):
        make_partition(LABELS, "dirichlet", 200, min_client_size=10)
    with pytest.raises(PartitionError, match="classes_per_client"):
        make_partition(LABELS, "shards", 3, classes_per_client=2)
