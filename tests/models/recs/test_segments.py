"""k-means user segments: deterministic, nearest-centroid assignment, never more segments than users allow."""
import numpy as np

from models.recs.segments import assign_segments, train_segments


def blobs(seed=0, per=60, dim=16):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[:3] * 5
    return np.concatenate([c + rng.normal(scale=0.3, size=(per, dim)) for c in centres]).astype(np.float32), per


def test_same_data_and_seed_give_the_same_segments_numbered_by_size():
    x, _ = blobs()
    a, b = train_segments(x, k=3, seed=1), train_segments(x, k=3, seed=1)
    np.testing.assert_array_equal(a, b)
    sizes = np.bincount(assign_segments(a, x), minlength=3)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_well_separated_groups_get_one_segment_each():
    x, per = blobs()
    seg = assign_segments(train_segments(x, k=3, seed=0), x)
    groups = [set(seg[i * per:(i + 1) * per]) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    # scale does not matter (cosine): a user's vector and twice it are in the same segment
    centroids = train_segments(x, k=3, seed=0)
    np.testing.assert_array_equal(assign_segments(centroids, x), assign_segments(centroids, 2 * x))


def test_few_users_give_few_segments():
    x, _ = blobs(per=3)
    assert len(train_segments(x, k=8)) == 2  # 9 users: at most 9 // 4 segments
