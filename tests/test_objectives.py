"""Every base loss of training/objectives: hand-computed values and gradients, a transcription of TRL 1.16's
formula for the same inputs, HDPO-on-X = X with the extras at 0, and the registry's reference rules."""

import math

import pytest
import torch
import torch.nn.functional as F

from polyalign.params import HdpoVariant
from polyalign.training.objectives import BASE_LOSSES, base_loss, resolve_reference
from polyalign.training.objectives.batch import PairBatch
from polyalign.training.objectives.compose import preference_loss

D = torch.float64


def sig(x):
    return 1 / (1 + math.exp(-x))


def batch(pc, pr, rc=None, rr=None, lc=(5.0, 10.0), lr=(4.0, 8.0), kl_policy=None, kl_ref=None,
          grad=False) -> PairBatch:
    def t(x):
        return None if x is None else torch.tensor(x, dtype=D)

    policy_chosen, policy_rejected = t(pc), t(pr)
    if grad:
        policy_chosen.requires_grad_(True)
        policy_rejected.requires_grad_(True)
    n = len(pc)
    return PairBatch(policy_chosen=policy_chosen, policy_rejected=policy_rejected, len_chosen=t(lc[:n]),
                     len_rejected=t(lr[:n]), d_chosen=torch.zeros(n, dtype=D), d_rejected=torch.zeros(n, dtype=D),
                     weight=torch.ones(n, dtype=D), ref_chosen=t(rc), ref_rejected=t(rr), kl_policy=t(kl_policy),
                     kl_ref=t(kl_ref))


def base(name, b, beta, offset=0.0, **knobs):
    return base_loss(name).loss(b, beta, torch.full_like(b.policy_chosen, offset), **knobs)


# pair 1: chosen ratio +1, rejected -1; pair 2: chosen -1, rejected +1 (summed log-probs, as in test_preference_loss)
PAIRED = {"pc": [-10.0, -20.0], "pr": [-12.0, -18.0], "rc": [-11.0, -19.0], "rr": [-11.0, -19.0]}


# --- hand-computed values


def test_sigmoid_by_hand():
    # beta 0.5: h = (1, -1); -log sigma(1) = 0.3132616875, -log sigma(-1) = 1.3132616875
    terms = base("sigmoid", batch(**PAIRED), 0.5)
    assert terms.losses.tolist() == pytest.approx([0.3132616875, 1.3132616875], rel=1e-9)
    assert terms.chosen_rewards.tolist() == [0.5, -0.5] and terms.rejected_rewards.tolist() == [-0.5, 0.5]


def test_cdpo_by_hand():
    # eps 0.1: pair 1: 0.9 * 0.3132616875 + 0.1 * 1.3132616875; pair 2 mirrored
    terms = base("cdpo", batch(**PAIRED), 0.5, eps=0.1)
    assert terms.losses.tolist() == pytest.approx([0.4132616875, 1.2132616875], rel=1e-9)


def test_robust_by_hand():
    # [(1 - eps)(-log sigma(h)) - eps(-log sigma(-h))] / (1 - 2 eps), eps 0.1:
    # pair 1: (0.9 * 0.3132616875 - 0.1 * 1.3132616875) / 0.8 = 0.18829 ...; pair 2: (0.9 * 1.3132616875 - 0.1 *
    # 0.3132616875) / 0.8
    terms = base("robust", batch(**PAIRED), 0.5, eps=0.1)
    assert terms.losses.tolist() == pytest.approx([(0.28193551875 - 0.13132616875) / 0.8,
                                                   (1.18193551875 - 0.03132616875) / 0.8], rel=1e-9)


def test_ipo_by_hand():
    # beta 0.5: delta = (1/5 + 1/4, -1/10 - 1/8) = (0.45, -0.225); (delta - 1)^2
    terms = base("ipo", batch(**PAIRED), 0.5)
    assert terms.losses.tolist() == pytest.approx([0.3025, 1.500625], rel=1e-9)


def test_simpo_by_hand():
    # no reference. beta 2, gamma 0.5: lbar_c = (-2, -2), lbar_r = (-3, -2.25)
    # z = 2 * (1, 0.25) - 0.5 = (1.5, 0); loss = (log(1 + e^-1.5), log 2)
    terms = base("simpo", batch(pc=[-10.0, -20.0], pr=[-12.0, -18.0]), 2.0, gamma=0.5)
    assert terms.losses.tolist() == pytest.approx([math.log1p(math.exp(-1.5)), math.log(2)], rel=1e-12)
    assert terms.chosen_rewards.tolist() == [-4.0, -4.0] and terms.rejected_rewards.tolist() == [-6.0, -4.5]


def test_orpo_by_hand():
    # lbar_c = -0.5 (one pair, 2 tokens), lbar_r = -1.0 (2 tokens): P_c = e^-0.5, P_r = e^-1
    # log odds = log(P_c / (1 - P_c)) - log(P_r / (1 - P_r)); loss = NLL (0.5 per token) - beta log sigma(log odds)
    b = batch(pc=[-1.0], pr=[-2.0], lc=(2.0,), lr=(2.0,))
    pc_, pr_ = math.exp(-0.5), math.exp(-1.0)
    log_odds = math.log(pc_ / (1 - pc_)) - math.log(pr_ / (1 - pr_))
    terms = base("orpo", b, 0.1)
    assert terms.losses.item() == pytest.approx(0.5 - 0.1 * math.log(sig(log_odds)), rel=1e-12)
    assert terms.logs["orpo/log_odds"].item() == pytest.approx(log_odds, rel=1e-12)


def test_kto_by_hand():
    # ratios: chosen (+1, -1), rejected (-1, +1); KL pairs: policy - ref = (0.3, 0.5) -> z0 = 0.4
    b = batch(**PAIRED, kl_policy=[-5.0, -6.0], kl_ref=[-5.3, -6.5])
    terms = base("kto", b, 0.5, desirable_weight=1.0, undesirable_weight=2.0)
    # pair 1: (1 - sigma(0.5 * 0.6)) + 2 (1 - sigma(0.5 * 1.4)), halved; pair 2: (1 - sigma(-0.7)) + 2 (1 - sigma(-0.3))
    expected = [((1 - sig(0.3)) + 2 * (1 - sig(0.7))) / 2, ((1 - sig(-0.7)) + 2 * (1 - sig(-0.3))) / 2]
    assert terms.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert terms.logs["kto/kl"].item() == pytest.approx(0.4)
    # a negative KL estimate is clamped to 0
    clamped = base("kto", batch(**PAIRED, kl_policy=[-6.0, -6.0], kl_ref=[-5.0, -5.0]), 0.5)
    assert clamped.logs["kto/kl"].item() == 0.0


# --- gradients, hand-derived


def test_sigmoid_family_gradients_by_hand():
    # z = h - m; dL/dpc = beta * dL/dz; sigmoid: dL/dz = -sigma(-z); cdpo: -(1-eps) sigma(-z) + eps sigma(z);
    # robust: [-(1-eps) sigma(-z) - eps sigma(z)] / (1 - 2 eps)
    eps, beta, h = 0.1, 0.5, [1.0, -1.0]
    expected = {
        "sigmoid": [-sig(-z) for z in h],
        "cdpo": [-(1 - eps) * sig(-z) + eps * sig(z) for z in h],
        "robust": [(-(1 - eps) * sig(-z) - eps * sig(z)) / (1 - 2 * eps) for z in h],
    }
    for name, dz in expected.items():
        b = batch(**PAIRED, grad=True)
        base(name, b, beta, **({"eps": eps} if name != "sigmoid" else {})).losses.sum().backward()
        assert b.policy_chosen.grad.tolist() == pytest.approx([beta * g for g in dz], rel=1e-12), name
        assert b.policy_rejected.grad.tolist() == pytest.approx([-beta * g for g in dz], rel=1e-12), name


def test_simpo_gradient_by_hand():
    # dL/dpc = -beta sigma(-z) / |y_c|, dL/dpr = +beta sigma(-z) / |y_r|, z = (1.5, 0) (see above)
    b = batch(pc=[-10.0, -20.0], pr=[-12.0, -18.0], grad=True)
    base("simpo", b, 2.0, gamma=0.5).losses.sum().backward()
    assert b.policy_chosen.grad.tolist() == pytest.approx([-2 * sig(-1.5) / 5, -2 * 0.5 / 10], rel=1e-12)
    assert b.policy_rejected.grad.tolist() == pytest.approx([2 * sig(-1.5) / 4, 2 * 0.5 / 8], rel=1e-12)


def test_ipo_gradient_by_hand():
    # dL/dpc = 2 (delta - 1/(2 beta)) / |y_c|
    b = batch(**PAIRED, grad=True)
    base("ipo", b, 0.5).losses.sum().backward()
    assert b.policy_chosen.grad.tolist() == pytest.approx([2 * (0.45 - 1) / 5, 2 * (-0.225 - 1) / 10], rel=1e-12)


def test_kto_gradient_by_hand_and_none_through_the_reference_point():
    # chosen: d/dpc [1 - sigma(beta (r_c - z0))] = -beta s (1 - s), s = sigma(beta (r_c - z0)); halved per pair
    b = batch(**PAIRED, kl_policy=[-5.0, -6.0], kl_ref=[-5.3, -6.5], grad=True)
    b.kl_policy.requires_grad_(True)
    base("kto", b, 0.5).losses.sum().backward()
    s = [sig(0.5 * (1 - 0.4)), sig(0.5 * (-1 - 0.4))]
    assert b.policy_chosen.grad.tolist() == pytest.approx([-0.5 * x * (1 - x) / 2 for x in s], rel=1e-12)
    assert b.kl_policy.grad is None  # z0 is detached, as in the paper and TRL


def test_orpo_gradient_matches_finite_differences():
    b = batch(pc=[-1.0, -3.0], pr=[-2.0, -2.5], lc=(2.0, 3.0), lr=(2.0, 4.0))

    def f(pc, pr):
        return base("orpo", PairBatch(pc, pr, b.len_chosen, b.len_rejected, b.d_chosen, b.d_rejected, b.weight),
                    0.1).losses.sum()

    assert torch.autograd.gradcheck(f, (b.policy_chosen.clone().requires_grad_(True),
                                        b.policy_rejected.clone().requires_grad_(True)))


# --- TRL 1.16's formulas, transcribed, on the same inputs


def trl_dpo(loss_type, pc, pr, rc, rr, lc, lr, beta, label_smoothing=0.0):
    """trl/trainer/dpo_trainer.py `_compute_loss` (f_divergence reverse_kl: scores are the log-ratios)."""
    chosen_scores, rejected_scores = pc - rc, pr - rr
    delta_score = chosen_scores - rejected_scores
    if loss_type == "sigmoid":
        return (-F.logsigmoid(beta * delta_score)).mean()
    if loss_type == "ipo":
        ipo_delta = chosen_scores / lc.clamp(min=1.0) - rejected_scores / lr.clamp(min=1.0)
        return ((ipo_delta - 1 / (2 * beta)) ** 2).mean()
    if loss_type == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta_score)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta_score)
        return ((clean - flipped) / (1 - 2 * label_smoothing)).mean()
    raise AssertionError(loss_type)


def trl_cpo_sigmoid(logits, beta, label_smoothing):
    """trl/experimental/cpo/cpo_trainer.py `cpo_loss`, loss_type sigmoid (cDPO's form), on `logits`."""
    return (-F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing)


def trl_simpo(avg_c, avg_r, beta, simpo_gamma):
    """`cpo_loss`, loss_type simpo, label_smoothing 0, on average log-probs (cpo_alpha 0: no NLL)."""
    logits = (avg_c - avg_r) - simpo_gamma / beta
    return (-F.logsigmoid(beta * logits)).mean()


def trl_orpo(avg_c, avg_r, beta, policy_nll_loss):
    """trl/experimental/orpo/orpo_trainer.py `odds_ratio_loss`, and loss = policy_nll_loss - losses.mean()."""
    log_odds = (avg_c - avg_r) - (torch.log(1 - torch.exp(avg_c)) - torch.log(1 - torch.exp(avg_r)))
    losses = beta * F.logsigmoid(log_odds)
    return policy_nll_loss - losses.mean()


def trl_kto(pc, pr, rc, rr, kl_p, kl_r, beta, desirable_weight, undesirable_weight):
    """trl/trainer/kto_trainer.py `_compute_loss`, loss_type kto, on a batch of the chosen and rejected sides."""
    kl = (kl_p - kl_r).mean().detach().clamp(min=0)
    chosen_losses = 1 - torch.sigmoid(beta * ((pc - rc) - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - (pr - rr)))
    return torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses), 0).mean()


@pytest.fixture
def random_pairs():
    g = torch.Generator().manual_seed(3)
    n = 8
    lc, lr = (torch.randint(1, 30, (n,), generator=g).to(D) for _ in range(2))
    pc, pr = -lc * (torch.rand(n, generator=g, dtype=D) * 2 + 0.1), -lr * (torch.rand(n, generator=g, dtype=D) * 2 + 0.1)
    rc, rr = pc + torch.randn(n, generator=g, dtype=D), pr + torch.randn(n, generator=g, dtype=D)
    kl_p, kl_r = torch.randn(n, generator=g, dtype=D) - 20, torch.randn(n, generator=g, dtype=D) - 20.5
    return PairBatch(policy_chosen=pc, policy_rejected=pr, len_chosen=lc, len_rejected=lr,
                     d_chosen=torch.rand(n, generator=g, dtype=D), d_rejected=torch.rand(n, generator=g, dtype=D),
                     weight=torch.ones(n, dtype=D), ref_chosen=rc, ref_rejected=rr, kl_policy=kl_p, kl_ref=kl_r)


def ours(b, name, beta, **knobs):
    return preference_loss(b, name, beta, knobs)[0]


def test_each_base_loss_matches_trl_1_16(random_pairs):
    b = random_pairs
    pc, pr, rc, rr, lc, lr = b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, b.len_chosen, b.len_rejected
    avg_c, avg_r = pc / lc, pr / lr
    free = PairBatch(pc, pr, lc, lr, b.d_chosen, b.d_rejected, b.weight)  # what a reference-free loss is given
    cases = {
        "sigmoid": (ours(b, "sigmoid", 0.1), trl_dpo("sigmoid", pc, pr, rc, rr, lc, lr, 0.1)),
        "ipo": (ours(b, "ipo", 0.3), trl_dpo("ipo", pc, pr, rc, rr, lc, lr, 0.3)),
        "robust": (ours(b, "robust", 0.2, eps=0.15), trl_dpo("robust", pc, pr, rc, rr, lc, lr, 0.2, 0.15)),
        "cdpo": (ours(b, "cdpo", 0.2, eps=0.15), trl_cpo_sigmoid((pc - rc) - (pr - rr), 0.2, 0.15).mean()),
        "simpo": (ours(free, "simpo", 2.0, gamma=1.2), trl_simpo(avg_c, avg_r, 2.0, 1.2)),
        "orpo": (ours(free, "orpo", 0.1), trl_orpo(avg_c, avg_r, 0.1, -pc.sum() / lc.sum())),
        "kto": (ours(b, "kto", 0.1, desirable_weight=1.0, undesirable_weight=1.5),
                trl_kto(pc, pr, rc, rr, b.kl_policy, b.kl_ref, 0.1, 1.0, 1.5)),
    }
    assert set(cases) == set(BASE_LOSSES)
    for name, (value, trl) in cases.items():
        assert abs(value.item() - trl.item()) < 1e-6, name


@pytest.mark.parametrize("name", list(BASE_LOSSES))
def test_hdpo_on_any_base_loss_with_the_extras_at_zero_is_the_base_loss_exactly(random_pairs, name):
    knobs = HdpoVariant(loss=name).knobs()
    b = random_pairs
    if base_loss(name).REFERENCE_FREE:
        b = PairBatch(b.policy_chosen, b.policy_rejected, b.len_chosen, b.len_rejected, b.d_chosen, b.d_rejected,
                      b.weight)
    composed, parts, _ = preference_loss(b, name, 0.2, knobs, hdpo_gamma=0.0, hdpo_lam=0.0, alpha=0.0)
    alone = base_loss(name).loss(b, 0.2, torch.zeros_like(b.policy_chosen), **knobs).losses.mean()
    assert composed.item() == alone.item()
    assert parts["hdpo/reg"].item() > 0  # computed and logged, but not added
    # and the extras do change it
    assert preference_loss(b, name, 0.2, knobs, hdpo_gamma=1.0, hdpo_lam=0.5, alpha=0.1)[0].item() != alone.item()


def test_the_critic_offset_makes_every_base_loss_demand_a_wider_margin(random_pairs):
    # a rejected side far from human support (d_r > d_c) must be beaten by more: the loss rises with the offset
    b = random_pairs
    b.d_rejected = b.d_chosen + 1.0
    for name in BASE_LOSSES:
        knobs = HdpoVariant(loss=name).knobs()
        plain = preference_loss(b, name, 0.2, knobs)[0].item()
        offset = preference_loss(b, name, 0.2, knobs, hdpo_gamma=0.5)[0].item()
        assert offset > plain, name


def test_reference_rules():
    assert resolve_reference("sigmoid", None) == "precomputed"
    assert resolve_reference("simpo", None) == resolve_reference("orpo", "none") == "none"
    assert resolve_reference("kto", "frozen") == "frozen"
    with pytest.raises(ValueError, match="simpo is reference-free"):
        resolve_reference("simpo", "precomputed")
    with pytest.raises(ValueError, match="ipo needs a reference"):
        resolve_reference("ipo", "none")
    assert {n for n in BASE_LOSSES if base_loss(n).REFERENCE_FREE} == {"simpo", "orpo"}
    assert {n for n in BASE_LOSSES if base_loss(n).NEEDS_UNPAIRED} == {"kto"}
