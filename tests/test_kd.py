"""ActiveKD student learners: DHO loss, head combination, CLAP teacher, end-to-end rounds."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from experiments import experiment_of

import raysvc.learners.kd  # noqa: F401  (registers no-distill, kd-zeroshot, kd-fewshot)
from raysvc.errors import ConfigError, UnknownNameError
from raysvc.experiment import assemble
from raysvc.learners import make_learner
from raysvc.learners.kd import (
    KDOptions,
    clap_logits,
    clap_loss,
    clap_penalty_weights,
    clap_steps,
    combine_heads,
    dho_loss,
    fit_clap,
    linear_warmup_decay,
)
from raysvc.learners.students import make_student
from raysvc.loop import run_loop
from raysvc.spec import RunSpec

PER_CLASS = 15


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    torch.set_num_threads(1)
    config = RunSpec(dataset="animal-mnist", per_class=PER_CLASS)
    return experiment_of(config, tmp_path_factory.mktemp("kd-features"))


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
    total, ce, kd = dho_loss(z_ce, z_kd, labels, mask, teacher.log(), T, ce_weight=1.0, kd_weight=0.5)

    expected_ce = -_log_softmax([2.0, 0.0])[0]  # log(1 + e^-2)
    kls = []
    for zk, pt in zip(z_kd.tolist(), teacher.tolist()):
        log_t = _log_softmax([math.log(p) / T for p in pt])
        log_s = _log_softmax([v / T for v in zk])
        kls.append(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_t, log_s)))
    expected_kd = (kls[0] / 1 + kls[1] / 1) * T * T  # each part averaged over its own rows
    assert ce.item() == pytest.approx(expected_ce, rel=1e-6)
    assert ce.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert kd.item() == pytest.approx(expected_kd, rel=1e-5)
    assert total.item() == pytest.approx(expected_ce + 0.5 * expected_kd, rel=1e-5)
    # logits and log-probabilities of the same teacher give the same loss
    shifted = dho_loss(z_ce, z_kd, labels, mask, teacher.log() + 3.0, T, ce_weight=1.0, kd_weight=0.5)[0]
    assert shifted.item() == pytest.approx(total.item(), rel=1e-6)

    # no teacher (no-distill) and no labeled row give zero terms
    total, _, kd = dho_loss(z_ce, z_kd, labels, mask, None, T, 1.0, 0.5)
    assert kd.item() == 0.0 and total.item() == pytest.approx(expected_ce, rel=1e-6)
    _, ce, _ = dho_loss(z_ce, z_kd, labels, torch.tensor([False, False]), teacher.log(), T)
    assert ce.item() == 0.0


def test_dho_loss_is_the_official_value_h8():
    """FINDINGS H-8: one labeled row (all logits 0, y = 0) and one unlabeled row whose teacher
    logits (2 ln 3, 0) give (.75, .25) at T = 2: 0.5 ln 2 + 0.5 * 4 (.75 ln 1.5 + .25 ln .5)."""
    z_ce = torch.zeros(2, 2)
    z_kd = torch.zeros(2, 2)
    teacher = torch.tensor([[0.0, 0.0], [2 * math.log(3.0), 0.0]])
    total, ce, kd = dho_loss(z_ce, z_kd, torch.tensor([0, 0]), torch.tensor([True, False]), teacher, 2.0)
    assert ce.item() == pytest.approx(math.log(2), abs=1e-6)
    assert kd.item() == pytest.approx(4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)), abs=1e-6)
    assert abs(total.item() - 0.608198) < 1e-5


def _official_dho_loss(ce_l, kd_l, kd_u, y, t_l, t_u, T=2.0):
    """train_active_others.py:286-303, transcribed: two separate batches, each KL its own batchmean."""
    import torch.nn.functional as F

    ce = F.cross_entropy(ce_l, y)
    kl_l = F.kl_div(F.log_softmax(kd_l / T, 1), F.softmax(t_l / T, 1), reduction="batchmean") * T * T
    kl_u = F.kl_div(F.log_softmax(kd_u / T, 1), F.softmax(t_u / T, 1), reduction="batchmean") * T * T
    return 0.5 * ce + 0.5 * (kl_l + kl_u)


def test_dho_loss_equals_the_official_two_batch_loss_on_unequal_parts():
    g = torch.Generator().manual_seed(0)
    n_l, n_u, c = 5, 7, 4
    ce_l, kd_l, kd_u = (2 * torch.randn(n, c, generator=g) for n in (n_l, n_l, n_u))
    y = torch.randint(c, (n_l,), generator=g)
    t_l, t_u = (8 * torch.randn(n, c, generator=g) for n in (n_l, n_u))
    official = _official_dho_loss(ce_l, kd_l, kd_u, y, t_l, t_u).item()
    mask = torch.cat([torch.ones(n_l), torch.zeros(n_u)]).bool()
    ours = dho_loss(torch.cat([ce_l, torch.randn(n_u, c, generator=g)]), torch.cat([kd_l, kd_u]),
                    torch.cat([y, torch.zeros(n_u, dtype=torch.long)]), mask, torch.cat([t_l, t_u]), 2.0)[0]
    assert abs(ours.item() - official) < 1e-5


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
    # class 2 has no labeled image: lambda = 0 (clap_others.py:234-248 divides 0 by 1e-10)
    assert clap_penalty_weights(probs, labels, 3).tolist() == pytest.approx([0.7, 0.6, 0.0])


def test_clap_hand_case_h9():
    """FINDINGS H-9: raw class embeddings w0 = (2, 0), w1 = (0, 3); labeled (1, 0) and (0, 1), both class 0."""
    anchor = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zs = clap_logits(feats, anchor, 100.0).softmax(-1).numpy()
    lam = torch.as_tensor(clap_penalty_weights(zs, np.array([0, 0]), 2), dtype=torch.float32)
    assert lam.tolist() == pytest.approx([0.5 * (1 + math.exp(-100)), 0.0])
    total, ce, penalty = clap_loss(anchor.clone(), feats, torch.tensor([0, 0]), anchor, lam, 100.0)
    assert penalty.item() == 0.0 and ce.item() == pytest.approx(50.0, abs=1e-3)
    moved = anchor.clone()
    moved[1] = torch.tensor([0.0, 5.0])  # lambda_1 = 0: moving w1 costs nothing
    assert clap_loss(moved, feats, torch.tensor([0, 0]), anchor, lam, 100.0)[2].item() == 0.0
    assert clap_steps(16) == 75  # floor(300 x 16 / 64)


def test_clap_starts_from_the_raw_text_embeddings_and_warms_up():
    anchor = np.array([[2.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    feats = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # 1 x 2 / 64 = 0 steps: the unnormalised anchor comes back as it is
    np.testing.assert_array_equal(fit_clap(feats, np.array([0, 1]), anchor, 100.0, repeat=1), anchor)
    factor = linear_warmup_decay(100)
    assert [factor(0), factor(5), factor(10), factor(55), factor(100)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_fewshot_teacher_improves_on_zeroshot(experiment):
    enc = experiment.encoded
    pool, test = experiment.pool, experiment.test
    text = torch.as_tensor(enc.text_features)
    zs_test = clap_logits(torch.as_tensor(enc.image_features[test]), text, enc.logit_scale).argmax(1).numpy()
    zs_acc = (zs_test == experiment.test_labels).mean()
    assert zs_acc == pytest.approx((enc.zeroshot_probs(test).argmax(1) == experiment.test_labels).mean())
    protos = fit_clap(enc.image_features[pool], experiment.pool_labels, enc.text_raw, enc.logit_scale)
    fitted = clap_logits(torch.as_tensor(enc.image_features[test]), torch.as_tensor(protos), enc.logit_scale)
    acc = (fitted.argmax(1).numpy() == experiment.test_labels).mean()
    assert acc > zs_acc + 0.05, (zs_acc, acc)


@pytest.mark.parametrize("learner", ["no-distill", "kd-zeroshot", "kd-fewshot"])
def test_two_rounds_end_to_end(experiment, learner):
    """ActiveKD's protocol: a 1-shot start (round 0), then B = number of classes per round."""
    config = RunSpec(dataset="animal-mnist", strategy="random", learner=learner, rounds=2, per_class=PER_CLASS,
                       initial_per_class=1, learner_params={"repeat": 1, "clap_repeat": 50})
    plan = config.resolve()
    # the plan's own experiment (its k-shot start), on the module's features
    rows = run_loop(plan, assemble(plan, lambda dataset, backbone: experiment.encoded))
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

    params = {"repeat": 1, "batch_size": 32}
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


def test_pool_epochs_schedule_is_epochs_of_pool_sized_batches():
    """raysvc's earlier schedule (variant pool-epochs): epochs x ceil(pool / batch_size) steps of one
    mixed batch, the loss of each logged (its own shard's on a worker group of one: all of it)."""
    from raysvc.datasets.base import array_dataset
    from raysvc.learners.kd import StudentSource, train_student

    rng = np.random.default_rng(0)
    dataset = array_dataset("noise", rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), np.arange(12) % 3,
                            ("a", "b", "c"))
    options = KDOptions(variant="pool-epochs", epochs=2, batch_size=4, image_size=32, student_weights="random")
    out = train_student({"options": options, "n_classes": 3, "images": StudentSource(dataset, np.arange(10),
                                                                                     np.arange(10, 12)),
                         "labeled": np.array([0, 1, 2]), "labels": np.array([0, 1, 2]),
                         "teacher_logits": rng.standard_normal((10, 3)), "seed": 0, "epochs": 2})
    assert out["steps"] == 2 * math.ceil(10 / 4) and out["losses"].shape == (out["steps"], 3)
    assert out["images"] == [out["steps"] * 4] and out["workers"] == 1
    assert np.allclose(out["losses"][:, 0], 0.5 * out["losses"][:, 1] + 0.5 * out["losses"][:, 2], atol=1e-5)
    assert out["pool"]["h"].shape == (10, out["pool"]["h"].shape[1]) and out["test"]["z_ce"].shape == (2, 3)


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
        KDOptions(alpha=1.5)
    with pytest.raises(ConfigError):
        KDOptions(epochs=0)
    with pytest.raises(ConfigError):
        KDOptions(labeled_fraction=0.0)
    with pytest.raises(ConfigError):
        KDOptions(clap_repeat=0)
    with pytest.raises(TypeError):
        KDOptions(probe_steps=300)  # replaced by clap_repeat and clap_lr
    with pytest.raises(dataclasses.FrozenInstanceError):
        KDOptions().alpha = 0.1


def test_kd_heads_analysis_reports_what_the_learner_predicts(experiment):
    from analysis.kd_heads import head_accuracies
    from raysvc.learners.base import LocalRunner

    config = KDOptions(repeat=1)
    labeled = np.arange(0, len(experiment.pool), 4)
    heads = head_accuracies(experiment, labeled, config, seed=7)
    learner = make_learner("kd-zeroshot", experiment, {"repeat": 1})
    learner.fit(labeled, experiment.pool_labels[labeled], seed=7, runner=LocalRunner())
    predicted = (learner.predict_proba("test").argmax(1) == experiment.test_labels).mean()
    assert heads["KD: heads mixed as probabilities"] == pytest.approx(predicted)
    assert heads["teacher"] == pytest.approx(learner.teacher_accuracy())
