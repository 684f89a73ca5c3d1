from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmine.classifiers import LabelClassifiers, hash_pairs
from xmine.config import ClassifierConfig
from xmine.errors import XmineError
from xmine.losses import build_shortlist_loss
from xmine.optim import RowSparseAdam
from xmine.training.classifiers import positive_candidates


def test_sparse_scores_equal_the_hashed_linear_model():
    rng = np.random.default_rng(0)
    clf = LabelClassifiers(50, 4, "dense+sparse", hash_buckets=1 << 12)
    with torch.no_grad():
        clf.sparse_table.weight.normal_()
        clf.weight.normal_()
        clf.bias.normal_()
    x = sp.random(6, 40, density=0.2, format="csr", dtype=np.float32, random_state=1)
    emb = torch.randn(6, 4)
    cand = rng.integers(0, 50, size=(6, 7))
    cand[0, 3] = -1
    got = clf.score(emb, x, cand).detach().numpy()
    table = clf.sparse_table.weight.detach().numpy()[:, 0]
    for i in range(6):
        for j in range(7):
            label = max(cand[i, j], 0)
            row = x[i]
            sparse_part = sum(v * table[hash_pairs(np.array([label]), np.array([f]), 1 << 12)[0]]
                              for f, v in zip(row.indices, row.data, strict=True))
            dense_part = float(emb[i] @ clf.weight[label].detach()) + float(clf.bias[label].detach())
            assert got[i, j] == pytest.approx(sparse_part + dense_part, abs=1e-4)


@pytest.mark.parametrize("buckets", [1, 1 << 12])
def test_compiled_sparse_scores_and_gradient_equal_the_gathered_torch_path(buckets):
    """The CPU path (hashing inside compiled forward and backward kernels) against the gathered torch path that
    GPUs run, on the same table and pairs; padding candidates (< 0) read label 0 in both."""
    rng = np.random.default_rng(2)
    clf = LabelClassifiers(300, 4, "sparse", hash_buckets=buckets, max_sparse_features=5)
    with torch.no_grad():
        clf.sparse_table.weight.normal_()
    x = sp.random(9, 60, density=0.15, format="csr", dtype=np.float32, random_state=3)  # some rows > 5 features
    cand = rng.integers(-1, 300, size=(9, 11))
    upstream = torch.from_numpy(rng.normal(size=(9, 11)).astype(np.float32))
    grads = []
    for path in ("compiled", "gathered"):
        clf.zero_grad()
        if path == "compiled":
            scores = clf._sparse_scores(x, cand)
        else:
            from xmine.topk import csr_row_topk
            scores = clf._sparse_scores_gathered(clf.sparse_table.weight.view(-1), csr_row_topk(x, 5),
                                                 np.maximum(cand, 0))
        (scores * upstream).sum().backward()
        grads.append((scores.detach().clone(), clf.sparse_table.weight.grad.clone()))
    (compiled, compiled_grad), (gathered, gathered_grad) = grads
    assert torch.allclose(compiled, gathered, atol=1e-6)
    assert torch.allclose(compiled_grad, gathered_grad, atol=1e-5)
    assert compiled_grad.abs().sum() > 0  # the gradient reached the table


def test_hash_pairs_is_the_multiplicative_hash_on_large_ids():
    """The hash saved models were trained with, written out in numpy: the compiled one must not drift from it."""
    k1, k2, k3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
    rng = np.random.default_rng(5)
    labels, features = rng.integers(0, 10**7, size=200), rng.integers(0, 2**31 - 1, size=200)
    with np.errstate(over="ignore"):
        full = ((labels.astype(np.uint64) * k1) ^ (features.astype(np.uint64) * k2)) * k3
    for bits in (0, 1, 22, 30):
        want = (full >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(200, dtype=np.int64)
        assert np.array_equal(hash_pairs(labels, features, 1 << bits), want)
    assert hash_pairs(np.array([[3, 4]]), np.array([[5, 6]]), 1 << 8).shape == (1, 2)


def test_classifiers_start_as_normalised_label_embeddings():
    emb = np.random.default_rng(1).normal(size=(10, 8)).astype(np.float32)
    clf = LabelClassifiers(10, 8, "dense")
    clf.init_dense(emb)
    expected = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert np.allclose(clf.weight.detach().numpy(), expected, atol=1e-6)
    with pytest.raises(XmineError, match="do not match"):
        clf.init_dense(emb[:5])


def test_hash_buckets_must_be_a_power_of_two():
    with pytest.raises(XmineError, match="power of two"):
        hash_pairs(np.array([1]), np.array([2]), 1000)


def test_save_load_round_trip(tmp_path):
    clf = LabelClassifiers(20, 4, "dense+sparse", hash_buckets=1 << 10)
    with torch.no_grad():
        clf.sparse_table.weight.normal_()
    clf.save(tmp_path)
    loaded = LabelClassifiers.load(tmp_path)
    x = sp.random(3, 30, density=0.3, format="csr", dtype=np.float32, random_state=0)
    cand = np.arange(12).reshape(3, 4)
    emb = torch.randn(3, 4)
    assert torch.equal(clf.score(emb, x, cand), loaded.score(emb, x, cand))


def test_positive_candidates_cap_and_padding():
    pos = sp.csr_matrix(np.array([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]))
    out = positive_candidates(pos, np.random.default_rng(0), cap=2)
    assert out.shape == (3, 2)
    assert set(out[0]) <= {0, 1, 3} and len(set(out[0])) == 2
    assert list(out[1]) == [-1, -1] and list(out[2]) == [1, -1]


def test_positive_candidates_equal_a_row_loop_with_the_same_random_draws():
    """The vectorised rows and the sampled long rows draw from the generator as one loop over rows would."""
    pos = sp.random(50, 40, density=0.15, format="lil", random_state=np.random.RandomState(3))
    pos[7, :30] = 1.0  # rows with more positives than the cap
    pos[20, 5:25] = 1.0
    pos = sp.csr_matrix(pos)
    cap = 8
    plain = np.full((50, min(int(np.diff(pos.indptr).max()), cap)), -1)
    plain_rng = np.random.default_rng(11)
    for i in range(50):
        row = pos.indices[pos.indptr[i]:pos.indptr[i + 1]]
        if len(row) > cap:
            row = plain_rng.choice(row, size=cap, replace=False)
        plain[i, :len(row)] = row
    assert np.array_equal(positive_candidates(pos, np.random.default_rng(11), cap=cap), plain)


def test_triplet_shortlist_loss_uses_hardest_pairs_only():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.0, -1.0]])
    is_pos = torch.tensor([[True, True, False, False, False]])
    valid = torch.ones_like(is_pos)
    config = ClassifierConfig(loss="triplet", margin=0.2, triplet_positives=1, triplet_negatives=1)
    # hardest positive 0.1, hardest negative 0.5: hinge 0.5 - 0.1 + 0.2 = 0.6
    assert build_shortlist_loss(config)(scores, is_pos, valid).item() == pytest.approx(0.6)


def test_bce_shortlist_loss_averages_over_the_valid_candidates_only():
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.3, 9.0, -9.0]])
    is_pos = torch.tensor([[True, False, False], [False, True, False]])
    valid = torch.tensor([[True, True, False], [True, True, True]])  # one padding slot: never counted
    plain = [torch.nn.functional.binary_cross_entropy_with_logits(scores[i, j], is_pos[i, j].float())
             for i in range(2) for j in range(3) if valid[i, j]]
    loss = build_shortlist_loss(ClassifierConfig(loss="bce"))(scores, is_pos, valid)
    assert loss.item() == pytest.approx(float(sum(plain) / len(plain)))


def test_sparse_part_reads_only_the_strongest_features():
    clf = LabelClassifiers(5, 2, "sparse", hash_buckets=1 << 10, max_sparse_features=2)
    with torch.no_grad():
        clf.sparse_table.weight.normal_()
    x = sp.csr_matrix(np.array([[0.1, 0.9, 0.0, 0.5, 0.05]], dtype=np.float32))
    top2 = sp.csr_matrix(np.array([[0.0, 0.9, 0.0, 0.5, 0.0]], dtype=np.float32))
    cand = np.array([[0, 1, 2]])
    assert torch.allclose(clf.score(None, x, cand), clf.score(None, top2, cand))


def test_row_sparse_updates_touch_only_the_scored_rows_and_match_adam_on_them():
    """classifier.row_sparse_updates: the dense weights' step changes only the rows the batch scored; on a first
    step (zero moments) lazy Adam computes Adam's update there, and Adam leaves the others unchanged too, so the two
    models agree (to 1e-5: the two kernels round differently; the step itself is lr = 1e-2)."""
    import torch

    from xmine.config import ClassifierConfig
    from xmine.training.classifiers import dense_optimizers

    rng = np.random.default_rng(0)
    n_labels, dim = 50, 8
    emb = torch.from_numpy(rng.standard_normal((6, dim)).astype(np.float32))
    cand = rng.integers(0, 20, size=(6, 4))  # labels 20..49 are never scored
    target = torch.from_numpy(rng.random((6, 4)) > 0.5).float()
    init = rng.standard_normal((n_labels, dim)).astype(np.float32)
    weights = []
    for sparse in (False, True):
        clf = LabelClassifiers(n_labels, dim, "dense", sparse_grad=sparse)
        clf.init_dense(init)
        before = clf.weight.detach().clone()
        opts = dense_optimizers(clf, ClassifierConfig(row_sparse_updates=sparse, features="dense"))
        assert isinstance(opts[0], RowSparseAdam) == sparse
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf.score(emb, None, cand), target)
        loss.backward()
        assert clf.weight.grad.is_sparse == sparse
        for opt in opts:
            opt.step()
        after = clf.weight.detach()
        untouched = np.setdiff1d(np.arange(n_labels), cand)
        assert torch.equal(after[untouched], before[untouched])
        assert not torch.equal(after[np.unique(cand)], before[np.unique(cand)])
        weights.append(after.clone())
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=0)


def _pair_kernel_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_labels, dim, batch, width = 300, 16, 24, 40
    init = rng.standard_normal((n_labels, dim)).astype(np.float32)
    emb = torch.from_numpy(rng.standard_normal((batch, dim)).astype(np.float32))
    cand = rng.integers(0, n_labels, size=(batch, width))
    cand[:, :3] = cand[0, :3]  # labels shared by every row, as in-batch negatives are
    cand[2, 5:9] = -1  # padding
    x = sp.random(batch, 50, density=0.2, format="csr", dtype=np.float32, random_state=seed)
    upstream = torch.from_numpy(rng.standard_normal(cand.shape).astype(np.float32))
    return n_labels, dim, init, emb, cand, x, upstream


def _scores_and_gradients(pair_kernel: bool, sparse_grad: bool, case) -> tuple[torch.Tensor, ...]:
    n_labels, dim, init, emb, cand, x, upstream = case
    clf = LabelClassifiers(n_labels, dim, "dense+sparse", hash_buckets=1 << 10, sparse_grad=sparse_grad,
                           pair_kernel=pair_kernel)
    clf.init_dense(init)
    with torch.no_grad():
        clf.sparse_table.weight.normal_(generator=torch.Generator().manual_seed(0))
    queries = emb.clone().requires_grad_()  # a fine-tuned encoder's output needs its gradient too
    scores = clf.score(queries, x, cand)
    (scores * upstream).sum().backward()
    weight_grad = clf.weight.grad.to_dense() if sparse_grad else clf.weight.grad
    assert clf.weight.grad.is_sparse == sparse_grad
    return scores.detach(), weight_grad, queries.grad, clf.bias.grad, clf.sparse_table.weight.grad


@pytest.mark.parametrize("sparse_grad", [False, True])
def test_pair_kernel_scores_and_gradients_equal_the_product_path(sparse_grad):
    """classifier.pair_kernel: the compiled pair scores give the product-against-distinct-candidates path's scores
    and gradients (weights dense or row-sparse, queries, biases, hashed table) up to float summation order."""
    case = _pair_kernel_case()
    product = _scores_and_gradients(False, sparse_grad, case)
    kernel = _scores_and_gradients(True, sparse_grad, case)
    for a, b in zip(product, kernel, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # rows no pair scored get no gradient; padding reads label 0, as the product path does
    n_labels, _, _, _, cand, _, _ = case
    untouched = np.setdiff1d(np.arange(n_labels), np.maximum(cand, 0))
    assert len(untouched) and not kernel[1][untouched].any()


def test_pair_kernel_results_do_not_depend_on_the_thread_count():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one numba thread on this machine")
    case = _pair_kernel_case(1)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _scores_and_gradients(True, False, case)
        numba.set_num_threads(2)
        two = _scores_and_gradients(True, False, case)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_training_with_the_pair_kernel_follows_the_product_path():
    """Three epochs of `train_classifiers` with and without the pair kernel: the same losses and weights up to
    the float rounding that summation order makes (which compounds over steps: 1e-4)."""
    from xmine.training.classifiers import train_classifiers

    rng = np.random.default_rng(3)
    n_points, n_labels, dim = 200, 60, 8
    labels = sp.csr_matrix((rng.random((n_points, n_labels)) < 0.05).astype(np.float32))
    embeddings = rng.standard_normal((n_points, dim)).astype(np.float32)
    features = sp.random(n_points, 30, density=0.1, format="csr", dtype=np.float32, random_state=3)
    init = rng.standard_normal((n_labels, dim)).astype(np.float32)
    shortlist = rng.integers(0, n_labels, size=(n_points, 12))

    def negatives(rows, batch_emb, batch_pos, epoch, step):
        return shortlist[rows]

    runs = []
    for pair_kernel in (False, True):
        config = ClassifierConfig(epochs=3, batch_size=32, pair_kernel=pair_kernel)
        clf = LabelClassifiers(n_labels, dim, "dense+sparse", hash_buckets=1 << 10, pair_kernel=pair_kernel)
        clf.init_dense(init)
        history = train_classifiers(clf, labels, config, negatives, embeddings=embeddings,
                                    sparse_features=features, progress=False)
        runs.append(([epoch.loss for epoch in history.epochs], clf.state_dict()))
    (loss_a, state_a), (loss_b, state_b) = runs
    assert loss_a[-1] < loss_a[0]
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], atol=1e-4, rtol=1e-4)


def test_hashed_scores_in_parallel_equal_the_serial_kernel_bit_for_bit():
    """From PARALLEL_ROWS rows the hashed scores run in parallel over rows: each pair's sum keeps its order,
    so the floats are the serial kernel's exactly (rows without features included)."""
    from xmine.classifiers import (
        PARALLEL_ROWS,
        _hash_shift,
        _hashed_scores,
        _hashed_scores_kernel,
        _hashed_scores_parallel,
    )

    rng = np.random.default_rng(0)
    rows = PARALLEL_ROWS + 7
    x = sp.random(rows, 200, density=0.1, format="lil", dtype=np.float32, random_state=0)
    x[3] = 0
    x = x.tocsr()
    table = rng.standard_normal(1 << 12).astype(np.float32)
    labels = rng.integers(0, 500, size=(rows, 30))
    args = (table, x.indptr, x.indices, x.data, labels, _hash_shift(1 << 12))
    serial = _hashed_scores_kernel(*args)
    assert not serial[3].any() and serial.any()
    assert np.array_equal(_hashed_scores_parallel(*args), serial)
    assert np.array_equal(_hashed_scores(*args), serial)


def test_the_first_epoch_trains_the_same_without_a_classifier_index_over_the_label_embeddings():
    """NGAME's classifier-index negatives: at the first epoch's start the classifiers are the label embeddings
    the shortlist was searched with, so an index over them proposes only shortlist labels, all dropped as
    duplicates. Skipping that build (and its searches) trains bit for bit what building it trained; from the
    second epoch the index is built as before."""
    from xmine.config import IndexConfig
    from xmine.models.ngame import ClassifierNegatives
    from xmine.training.classifiers import train_classifiers

    rng = np.random.default_rng(5)
    n_points, n_labels, dim = 300, 120, 16
    labels = sp.csr_matrix((rng.random((n_points, n_labels)) < 0.03).astype(np.float32))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    label_emb = unit(rng.standard_normal((n_labels, dim)))
    # points near their labels, so that a label's classifier and its points' queries agree
    embeddings = unit(labels @ label_emb + 0.5 * rng.standard_normal((n_points, dim)))
    shortlist = np.argsort(-(embeddings @ label_emb.T), axis=1, kind="stable")[:, :50]  # the label index's top 50

    class BuiltAtEveryEpoch(ClassifierNegatives):
        def refresh(self, epoch, step):
            self.mips.rebuild(self.classifiers.weight.detach().cpu().numpy())

    runs = []
    for negatives_class in (ClassifierNegatives, BuiltAtEveryEpoch):
        config = ClassifierConfig(epochs=2, batch_size=32, classifier_index_negatives=10,
                                  negatives_index=IndexConfig(kind="exact"))
        clf = LabelClassifiers(n_labels, dim, "dense")
        clf.init_dense(label_emb)
        negatives = negatives_class(shortlist, clf, config, n_labels)
        history = train_classifiers(clf, labels, config, negatives, embeddings=embeddings,
                                    on_epoch_start=negatives.refresh, progress=False)
        runs.append(([epoch.loss for epoch in history.epochs], clf.state_dict(), negatives.mips.rebuilds))
    (loss_new, state_new, builds_new), (loss_old, state_old, builds_old) = runs
    assert (builds_new, builds_old) == (1, 2)
    assert loss_new == loss_old
    for key in state_old:
        assert torch.equal(state_new[key], state_old[key]), key

    # a fine-tuned encoder moves the queries within the first epoch: then the index is built at its start too
    tuned = ClassifierConfig(classifier_index_negatives=10, finetune_encoder=True)
    negatives = ClassifierNegatives(shortlist, clf, tuned, n_labels)
    negatives.refresh(0, 0)
    assert negatives.mips.rebuilds == 1
