"""Latent alignment, Eq. 1-3, against plain reference computations."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from coat_hf.correspondence import align_features, cosine_similarity, find_correspondence, mutual_consistency


def reference_alignment(f1: torch.Tensor, f2: torch.Tensor):
    """Eq. 1-3 with explicit per-pair loops on one image: (C, N1), (C, N2)."""
    c, n1 = f1.shape
    n2 = f2.shape[1]
    s = torch.empty(n1, n2, dtype=torch.float64)
    for i in range(n1):
        for j in range(n2):
            a, b = f1[:, i].double(), f2[:, j].double()
            s[i, j] = (a @ b) / (a.norm() * b.norm())
    q = torch.empty_like(s)
    for i in range(n1):
        for j in range(n2):
            q[i, j] = s[i, j] ** 2 / (s[:, j].max() * s[i, :].max())
    aligned = f1.clone()
    for i in range(n1):
        j = int(s[i].argmax())
        if int(s[:, j].argmax()) == i:  # (i, j) in p: mutual nearest neighbours, Q_ij = 1
            assert abs(q[i, j] - 1) < 1e-9
            aligned[:, i] = f2[:, j]
    return s, q, aligned


def test_equations_1_to_3_match_loops():
    torch.manual_seed(0)
    f1, f2 = torch.randn(1, 5, 4, 3), torch.randn(1, 5, 3, 5)
    s_ref, q_ref, aligned_ref = reference_alignment(f1[0].flatten(1), f2[0].flatten(1))
    s = cosine_similarity(f1, f2)
    assert s.shape == (1, 12, 15)
    torch.testing.assert_close(s[0].double(), s_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(mutual_consistency(s)[0].double(), q_ref, atol=1e-5, rtol=0)
    aligned, matches = align_features(f1, f2, block_size=5)
    assert torch.equal(aligned[0].flatten(1), aligned_ref)
    # Among positive similarities, the confident set is exactly where Q reaches 1 (a large negative
    # S_ij can also give Q >= 1, which is why p is decided by argmax agreement).
    q = mutual_consistency(s)[0]
    ci, si, score = matches.pairs(0)
    assert set(zip(ci.tolist(), si.tolist())) == {tuple(x) for x in ((q > 1 - 1e-6) & (s[0] > 0)).nonzero().tolist()}
    torch.testing.assert_close(score, s[0, ci, si])


@pytest.mark.parametrize("shapes", [((8, 8), (8, 8)), ((16, 12), (10, 16)), ((32, 32), (32, 32)), ((7, 9), (5, 3))])
@pytest.mark.parametrize("block_size", [1, 7, 64, 4096])
def test_blocked_equals_naive_full_matrix(shapes, block_size):
    torch.manual_seed(sum(shapes[0]) + block_size)
    (h1, w1), (h2, w2) = shapes
    f1, f2 = torch.randn(2, 16, h1, w1), torch.randn(2, 16, h2, w2)
    s = cosine_similarity(f1, f2)  # the naive full matrix
    q = mutual_consistency(s)
    row_max, row_arg = s.max(dim=2)
    mutual = s.argmax(dim=1).gather(1, row_arg) == torch.arange(h1 * w1)
    naive = torch.where(mutual[:, None], f2.flatten(2).gather(2, row_arg[:, None].expand(-1, 16, -1)), f1.flatten(2))

    aligned, m = align_features(f1, f2, block_size=block_size)
    assert torch.equal(aligned.flatten(2), naive)
    assert torch.equal(m.nearest, row_arg) and torch.equal(m.mutual, mutual)
    torch.testing.assert_close(m.similarity, row_max)
    torch.testing.assert_close(m.confidence, q.gather(2, row_arg[..., None])[..., 0])
    assert torch.all(m.confidence[m.mutual] > 1 - 1e-5) and torch.all(m.confidence[~m.mutual] < 1)
    assert m.confidence_map().shape == (2, h1, w1)


@pytest.mark.parametrize("block_size", [3, 1024])
def test_ties_take_the_first_style_position(block_size):
    """Duplicated style features tie exactly: the search, as argmax does, picks the first of them (row-major over the
    style grid, whichever style row or column it is in)."""
    torch.manual_seed(5)
    palette = torch.randn(2, 8, 3)  # three distinct features per image
    f2 = palette[:, :, torch.tensor([2, 1, 0, 1, 2, 0, 0, 2, 1, 1, 0, 2])].view(2, 8, 3, 4)  # each appears 4 times
    f1 = torch.randn(2, 8, 5, 2)
    expected = torch.stack([cosine_similarity(f1[b : b + 1], f2[b : b + 1])[0].argmax(dim=1) for b in range(2)])
    assert set(expected.unique().tolist()) <= {0, 1, 2}  # the first occurrences
    for rule in ("mutual", "nearest"):
        aligned, matches = align_features(f1, f2, block_size, rule=rule)
        assert torch.equal(matches.nearest, expected)
    aligned, _ = align_features(f1, f2, block_size, rule="nearest", return_matches=False)
    assert torch.equal(aligned.flatten(2), f2.flatten(2).gather(2, expected[:, None].expand(-1, 8, -1)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("block_size", [7, 1024])
def test_cuda_search_equals_the_cpu_search(block_size):
    """Off the CPU the row and column maxima are plain ``max`` reductions (the CPU has its own faster form):
    the same matches, ties included (float64: no TF32 rounding)."""
    torch.manual_seed(11)
    f1, f2 = torch.randn(2, 16, 12, 10, dtype=torch.float64), torch.randn(2, 16, 9, 14, dtype=torch.float64)
    f2[:, :, 1] = f2[:, :, 4]  # a duplicated style row: exact ties
    for rule in ("mutual", "nearest"):
        cpu_aligned, cpu = align_features(f1, f2, block_size, rule=rule)
        cuda_aligned, cuda = align_features(f1.cuda(), f2.cuda(), block_size, rule=rule)
        assert torch.equal(cuda.nearest.cpu(), cpu.nearest) and torch.equal(cuda.mutual.cpu(), cpu.mutual)
        torch.testing.assert_close(cuda_aligned.cpu(), cpu_aligned)


def test_self_alignment_is_identity():
    f = torch.randn(1, 8, 6, 6)
    aligned, m = align_features(f, f)
    assert m.mutual.all() and torch.equal(aligned, f)
    assert torch.equal(m.nearest[0], torch.arange(36))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same batch and channels"):
        find_correspondence(torch.randn(1, 4, 3, 3), torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match="block_size"):
        find_correspondence(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), block_size=0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        find_correspondence(torch.randn(4, 3, 3), torch.randn(4, 3, 3))


def test_blocked_memory_grows_with_hw_not_hw_squared():
    """Two 1x256x128x128 maps: the full matrix alone would be 1 GiB; blocked peak growth stays < 512 MiB."""
    script = textwrap.dedent(
        """
        import threading, time, psutil, torch
        from coat_hf.correspondence import align_features
        torch.manual_seed(0)
        f1, f2 = torch.randn(1, 256, 128, 128), torch.randn(1, 256, 128, 128)
        proc = psutil.Process()
        base = proc.memory_info().rss
        peak, done = [base], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)
        t = threading.Thread(target=sample); t.start()
        aligned, m = align_features(f1, f2, block_size=1024)
        done.set(); t.join()
        assert aligned.shape == f1.shape
        print((peak[0] - base) / 2**20)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 512, f"peak memory grew by {growth_mib:.0f} MiB"


@pytest.mark.parametrize("block_size", [5, 1024])
def test_alignment_rules_match_a_plain_reference(block_size):
    torch.manual_seed(3)
    f1, f2 = torch.randn(2, 6, 4, 5), torch.randn(2, 6, 3, 4)  # N1 = 20, N2 = 12
    s = cosine_similarity(f1, f2)  # (B, N1, N2)
    nearest = s.argmax(dim=2)
    moved = torch.stack([f2.flatten(2)[b][:, nearest[b]] for b in range(2)])  # (B, C, N1)
    aligned, _ = align_features(f1, f2, block_size, rule="nearest")
    torch.testing.assert_close(aligned.flatten(2), moved)
    aligned, matches = align_features(f1, f2, block_size, rule="nearest", return_matches=False)  # no column maxima
    assert matches is None
    torch.testing.assert_close(aligned.flatten(2), moved)
    temperature = 0.1
    confidence = (s.amax(dim=2) / s.amax(dim=1).gather(1, nearest)).clamp(0, 1)  # Q of the best match (Eq. 2)
    soft = torch.softmax(s / temperature, dim=2) @ f2.flatten(2).transpose(1, 2)  # (B, N1, C)
    expected = confidence[:, None] * soft.transpose(1, 2) + (1 - confidence[:, None]) * f1.flatten(2)
    aligned, _ = align_features(f1, f2, block_size, rule="soft", temperature=temperature)
    torch.testing.assert_close(aligned.flatten(2), expected)
    with pytest.raises(ValueError, match="alignment must be one of"):
        align_features(f1, f2, rule="closest")


@pytest.mark.parametrize("rule", ["mutual", "nearest", "soft"])
def test_keys_decide_the_matches_and_the_features_move(rule):
    """With ``content_key``/``style_key`` (the VGG16 matching maps), Eq. 1-2 run on the keys and every rule moves
    the features: the same as aligning the keys, with the features in their place."""
    torch.manual_seed(4)
    k1, k2 = torch.randn(2, 7, 4, 5), torch.randn(2, 7, 3, 4)  # keys: another channel count
    f1, f2 = torch.randn(2, 6, 4, 5), torch.randn(2, 6, 3, 4)
    aligned, matches = align_features(f1, f2, 5, rule=rule, temperature=0.1, content_key=k1, style_key=k2)
    key_matches = find_correspondence(k1, k2)
    assert torch.equal(matches.nearest, key_matches.nearest) and torch.equal(matches.mutual, key_matches.mutual)
    s = cosine_similarity(k1, k2)
    moved = f2.flatten(2).gather(2, key_matches.nearest[:, None].expand(-1, 6, -1))
    if rule == "nearest":
        expected = moved
    elif rule == "mutual":
        expected = torch.where(key_matches.mutual[:, None], moved, f1.flatten(2))
    else:
        soft = (torch.softmax(s / 0.1, dim=2) @ f2.flatten(2).transpose(1, 2)).transpose(1, 2)
        weight = key_matches.confidence.clamp(0, 1)[:, None]
        expected = weight * soft + (1 - weight) * f1.flatten(2)
    torch.testing.assert_close(aligned.flatten(2), expected)
    with pytest.raises(ValueError, match="must have the features' sizes"):
        align_features(f1, f2, content_key=k1[..., :3], style_key=k2)


def test_soft_alignment_passes_gradients_to_both_maps():
    f1, f2 = torch.randn(1, 4, 3, 3, requires_grad=True), torch.randn(1, 4, 3, 3, requires_grad=True)
    aligned, _ = align_features(f1, f2, rule="soft")
    aligned.sum().backward()
    assert f1.grad.abs().sum() > 0 and f2.grad.abs().sum() > 0
