"""The two loss levers: history_negatives (each example's own context movies as
negatives) and candidate_softmax_weight (a second softmax, each label over the
batch's queries). Each is checked against the plain formula written out with
the whole score matrix, and against the plain loss it must differ from."""
import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer.towers import tower_cfg
from trainer import losses, model
from trainer.config import ConfigError, LossConfig

VOCAB = list(range(1, 30))
B, L = 12, 5


def _grads(fn, *arrays):
    variables = [tf.Variable(a) for a in arrays]
    with tf.GradientTape() as tape:
        loss = fn(*variables)
    return [loss.numpy(), *(g.numpy() for g in tape.gradient(loss, variables))]


@pytest.mark.parametrize("block_elements", [None, 20, 1])
@pytest.mark.parametrize("temperature", [None, 0.5])
def test_extra_scores_equal_extra_softmax_columns(temperature, block_elements):
    rng = np.random.default_rng(2)
    b, d, k = 7, 4, 3
    query = rng.standard_normal((b, d)).astype(np.float32)
    candidate = rng.standard_normal((b + 2, d)).astype(np.float32)
    extra = rng.standard_normal((b, k)).astype(np.float32)
    extra[1, :] = losses.NO_NEGATIVE  # a row without negatives of its own
    extra[4, 2] = losses.NO_NEGATIVE
    want = _grads(lambda q, c, h: losses.reference_in_batch_softmax_loss(
        q, c, temperature, extra_scores=h), query, candidate, extra)
    got = _grads(lambda q, c, h: losses.in_batch_softmax_loss(
        q, c, temperature, block_elements=block_elements, extra_scores=h),
        query, candidate, extra)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert np.all(got[3][extra == losses.NO_NEGATIVE] == 0)  # absent: no gradient
    plain = float(losses.in_batch_softmax_loss(query, candidate, temperature))
    assert got[0] > plain + 0.1  # more negatives, larger loss


def _features(seed=1):
    rng = np.random.default_rng(seed)
    context = rng.choice(VOCAB, (B, L))
    context[:3, 2:] = 0  # right padding
    labels = rng.choice(VOCAB, B)
    context[5, 1] = labels[5]  # the label inside its own context: not a negative
    return {schema.CONTEXT_MOVIE_ID: tf.constant(context, tf.int64),
            schema.LABEL_MOVIE_ID: tf.constant(labels, tf.int64)}


COUNTS = np.arange(len(VOCAB)) % 7  # train label counts, some 0


def _model(**loss):
    tf.keras.utils.set_random_seed(3)
    towers = model.build_towers(VOCAB, L, tower_cfg(8))
    return model.SequentialRetrievalModel(*towers, B, loss=LossConfig(temperature=0.5, **loss),
                                          movie_ids=VOCAB, label_counts=COUNTS)


def _by_hand(m, features, weight=0.0, history=False):
    """The loss summed over the batch, from the towers' outputs and the dense reference.
    History negatives' logits: score / T + log(B q), q = (count + 1) / (total + V)."""
    context, labels = features[schema.CONTEXT_MOVIE_ID], features[schema.LABEL_MOVIE_ID]
    q = m.query_model(context, training=True)
    c = m.candidate_model(labels, training=True)
    extra = None
    if history:
        n = tf.reshape(m.candidate_model(tf.reshape(context, [-1]), training=True), [B, L, -1])
        valid = (context.numpy() != 0) & (context.numpy() != labels.numpy()[:, None])
        share = (COUNTS + 1) / (COUNTS.sum() + len(VOCAB))
        log_bq = np.log(B * share)[np.maximum(context.numpy() - 1, 0)]  # VOCAB[i] = i + 1
        extra = losses.own_negative_scores(q, n, tf.constant(valid), tf.constant(0.5 * log_bq))
    rows = losses.reference_in_batch_softmax_loss(q, c, 0.5, extra_scores=extra)
    return float(rows + weight * losses.reference_in_batch_softmax_loss(c, q, 0.5))


@pytest.mark.parametrize("loss", [dict(history_negatives=True),
                                  dict(candidate_softmax_weight=0.7),
                                  dict(history_negatives=True, candidate_softmax_weight=1.0)])
def test_model_loss_is_the_formula_and_not_the_plain_loss(loss):
    features = _features()
    m = _model(**loss)
    scaled, mean = m.compute_losses(features, training=True)
    want = _by_hand(m, features, loss.get("candidate_softmax_weight", 0.0),
                    loss.get("history_negatives", False))
    assert float(scaled) * B == pytest.approx(want, rel=1e-5)
    assert float(mean) * B == pytest.approx(want, rel=1e-5)
    plain = _by_hand(m, features)
    assert abs(want - plain) > 0.01 * plain  # the lever changes the loss


def test_history_without_real_negatives_is_the_plain_loss():
    # Contexts of padding and the label itself only: no negative to add.
    features = _features()
    labels = features[schema.LABEL_MOVIE_ID].numpy()
    context = np.zeros((B, L), np.int64)
    context[:, 0] = labels
    features = {**features, schema.CONTEXT_MOVIE_ID: tf.constant(context)}
    with_history = float(_model(history_negatives=True).compute_losses(features, True)[0])
    plain = float(_model().compute_losses(features, True)[0])
    assert with_history == pytest.approx(plain, rel=1e-6)


def test_refused_with_accidental_hit_removal():
    for lever in (dict(history_negatives=True), dict(candidate_softmax_weight=1.0)):
        with pytest.raises(ConfigError, match=next(iter(lever))):
            LossConfig(remove_accidental_hits=True, **lever)
    towers = model.build_towers(VOCAB, L, tower_cfg(8))
    with pytest.raises(ValueError, match="label_counts"):
        model.SequentialRetrievalModel(*towers, B, loss=LossConfig(history_negatives=True),
                                       movie_ids=VOCAB)


def test_own_negative_bias_adds_the_sampling_correction():
    # log q + log B - log(clip(p)): with the correction of TFRS's logQ on, a
    # certain negative is B columns' worth of an unsampled movie.
    log_share, p = np.log([0.5, 0.01]), np.array([0.5, 1e-9], np.float32)
    got = losses.own_negative_bias(log_share, 8, losses.log_correction(tf.constant(p))).numpy()
    np.testing.assert_allclose(got, log_share + np.log(8) - np.log([0.5, 1e-6]), rtol=1e-5)
