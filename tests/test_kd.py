"""ActiveKD student learners: DHO loss, head combination, CLAP teacher, end-to-end rounds."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import raysvc.learners.kd  # noqa: F401  (registers no-distill, kd-zeroshot, kd-fewshot)
from raysvc.config import RunSpec
from raysvc.errors import ConfigError, UnknownNameError
from raysvc.features import FeatureStore
from raysvc.learners import make_learner
from raysvc.learners.kd import KDConfig, clap_logits, clap_penalty_weights, combine_heads, dho_loss, fit_clap
from raysvc.learners.students import make_student
from raysvc.loop import load_experiment, run_loop, store_encoder

PER_CLASS = 15


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    torch.set_num_threads(1)
    config = RunSpec(dataset="animal-mnist", per_class=PER_CLASS)
    store = FeatureStore(tmp_path_factory.mktemp("kd-features"), progress="off")
    return load_experiment(config, store_encoder(store))


def _log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def test_dho_loss_matches_hand_computation():
    z_ce = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z_kd = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])  # the second row is unlabeled: its label is ignored
    mask = torch.tensor([True, False])
    teacher = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    T = 2.0
    total, ce, kd = dho_loss(z_ce, z_kd, labels, mask, teacher, T, ce_weight=1.0, kd_weight=0.5)

    expected_ce = -_log_softmax([2.0, 0.0])[0]  # log(1 + e^-2)
    kls = []
    for zk, pt in zip(z_kd.tolist(), teacher.tolist()):
        log_t = _log_softmax([math.log(p) / T for p in pt])
        log_s = _log_softmax([v / T for v in zk])
        kls.append(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_t, log_s)))
    expected_kd = sum(kls) / 2 * T * T
    assert ce.item() == pytest.approx(expected_ce, rel=1e-6)
    assert ce.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert kd.item() == pytest.approx(expected_kd, rel=1e-5)
    assert total.item() == pytest.approx(expected_ce + 0.5 * expected_kd, rel=1e-5)

    # no teacher (no-distill) and no labeled row give zero terms
    total, _, kd = dho_loss(z_ce, z_kd, labels, mask, None, T)
    assert kd.item() == 0.0 and total.item() == pytest.approx(expected_ce, rel=1e-6)
    _, ce, _ = dho_loss(z_ce, z_kd, labels, torch.tensor([False, False]), teacher, T)
    assert ce.item() == 0.0


def test_combine_heads_matches_hand_computation():
    z_ce = torch.tensor([[2.0, 0.0, -1.0]])
    z_kd = torch.tensor([[0.0, 4.0, 0.0]])
    p = combine_heads(z_ce, z_kd, alpha=0.25, beta=2.0)
    ce = [math.exp(v) for v in (2.0, 0.0, -1.0)]
    kd = [math.exp(v) for v in (0.0, 2.0, 0.0)]  # z_kd / beta
    expected = [0.25 * a / sum(ce) + 0.75 * b / sum(kd) for a, b in zip(ce, kd)]
    assert p[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert p.sum().item() == pytest.approx(1.0)
    assert combine_heads(z_ce, z_kd, 1.0, 1.0)[0].tolist() == pytest.approx(z_ce.softmax(-1)[0].tolist())


def test_clap_penalty_weights_are_zeroshot_confidence_per_class():
    probs = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.2, 0.6, 0.2]])
    labels = np.array([0, 0, 1])
    assert clap_penalty_weights(probs, labels, 3).tolist() == pytest.approx([0.7, 0.6, 1.0])


def test_fewshot_teacher_improves_on_zeroshot(experiment):
    enc = experiment.encoded
    pool, test = experiment.pool, experiment.test
    text = torch.as_tensor(enc.text_features)
    zs_test = clap_logits(torch.as_tensor(enc.image_features[test]), text, enc.logit_scale).argmax(1).numpy()
    zs_acc = (zs_test == experiment.test_labels).mean()
    assert zs_acc == pytest.approx((enc.zeroshot_probs(test).argmax(1) == experiment.test_labels).mean())
    protos = fit_clap(enc.image_features[pool], experiment.pool_labels, enc.text_features, enc.logit_scale)
    fitted = clap_logits(torch.as_tensor(enc.image_features[test]), torch.as_tensor(protos), enc.logit_scale)
    acc = (fitted.argmax(1).numpy() == experiment.test_labels).mean()
    assert acc > zs_acc + 0.05, (zs_acc, acc)


@pytest.mark.parametrize("learner", ["no-distill", "kd-zeroshot", "kd-fewshot"])
def test_two_rounds_end_to_end(experiment, learner):
    """ActiveKD's protocol: a 1-shot start (round 0), then B = number of classes per round."""
    config = RunSpec(dataset="animal-mnist", strategy="random", learner=learner, rounds=2, per_class=PER_CLASS,
                       initial_per_class=1, learner_params={"epochs": 1, "probe_steps": 50})
    rows = run_loop(config, experiment)
    budget = experiment.dataset.n_classes
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["n_queried"] for r in rows] == [budget, 2 * budget, 3 * budget]
    for row in rows:
        assert 0.0 <= row["test_acc"] <= 1.0
        assert row["student"] == "efficientnet-lite0"  # the default, recorded
        if learner == "no-distill":
            assert math.isnan(row["teacher_acc"]) and row["teacher"] == ""
        else:
            assert 0.0 <= row["teacher_acc"] <= 1.0
            assert row["teacher"] == "conse-lite0"
    if learner == "kd-zeroshot":
        assert rows[0]["teacher_acc"] == pytest.approx(rows[0]["zeroshot_acc"])


def test_state_round_trip_and_student_badge(experiment):
    from raysvc.learners.base import LocalRunner
    from raysvc.strategies import Pool, make_strategy
    from raysvc.strategies.badge import cosine_farthest_first, gradient_factor

    params = {"epochs": 1, "batch_size": 32}
    learner = make_learner("kd-zeroshot", experiment, params)
    assert np.allclose(learner.predict_proba("pool"), experiment.encoded.zeroshot_probs(experiment.pool))
    assert learner.pool_embeddings() is None
    labeled = np.arange(0, len(experiment.pool), 6)
    learner.fit(labeled, experiment.pool_labels[labeled], seed=3, runner=LocalRunner())
    resumed = make_learner("kd-zeroshot", experiment, params)
    resumed.set_state(learner.get_state())
    for split in ("pool", "test"):
        np.testing.assert_array_equal(resumed.predict_proba(split), learner.predict_proba(split))
    np.testing.assert_array_equal(resumed.pool_embeddings(), learner.pool_embeddings())
    assert resumed.teacher_accuracy() == learner.teacher_accuracy()

    assert resumed.pool_embeddings().shape == (len(experiment.pool), 1280)
    mask = np.zeros(len(experiment.pool), bool)
    mask[labeled] = True
    labels = np.where(mask, experiment.pool_labels, -1)
    pool = Pool(experiment.encoded.image_features[experiment.pool], resumed.predict_proba("pool"), mask, labels,
                embeddings=resumed.pool_embeddings(), round=2)
    picks = make_strategy("badge").select(pool, 5, seed=0).query
    assert len(set(picks.tolist())) == 5 and not mask[picks].any()
    # ActiveKD's BADGE: the gradient of the combined heads' probs on the student's features
    expected = cosine_farthest_first([(gradient_factor(pool.probs), resumed.pool_embeddings())], mask, 5)
    assert picks.tolist() == expected.tolist()


def test_unknown_student_name(experiment):
    with pytest.raises(ConfigError, match="option student='vgg99': input should be 'efficientnet-lite0'"):
        make_learner("kd-zeroshot", experiment, {"student": "vgg99"})
    with pytest.raises(UnknownNameError):
        make_student("vgg99", 10)


def test_teacher_with_fewer_classes_is_a_config_error(experiment):
    encoded = dataclasses.replace(experiment.encoded, text_features=experiment.encoded.text_features[:5])
    small = dataclasses.replace(experiment, encoded=encoded)
    with pytest.raises(ConfigError) as info:
        make_learner("kd-fewshot", small, {})
    assert "\n" not in str(info.value) and "5 classes" in str(info.value)


def test_config_validation():
    with pytest.raises(ConfigError):
        KDConfig(alpha=1.5)
    with pytest.raises(ConfigError):
        KDConfig(epochs=0)
    with pytest.raises(ConfigError):
        KDConfig(labeled_fraction=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        KDConfig().alpha = 0.1


def test_kd_heads_analysis_reports_what_the_learner_predicts(experiment):
    from analysis.kd_heads import head_accuracies
    from raysvc.learners.base import LocalRunner

    config = KDConfig(epochs=1)
    labeled = np.arange(0, len(experiment.pool), 4)
    heads = head_accuracies(experiment, labeled, config, seed=7)
    learner = make_learner("kd-zeroshot", experiment, {"epochs": 1})
    learner.fit(labeled, experiment.pool_labels[labeled], seed=7, runner=LocalRunner())
    predicted = (learner.predict_proba("test").argmax(1) == experiment.test_labels).mean()
    assert heads["KD: heads mixed as probabilities"] == pytest.approx(predicted)
    assert heads["teacher"] == pytest.approx(learner.teacher_accuracy())
