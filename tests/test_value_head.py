import os
import socket

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from knapsack_trl.core.allocator import AllocatorConfig, KnapsackRolloutAllocator
from knapsack_trl.core.calibration import calibration_metrics, group_mean_rewards, group_successes
from knapsack_trl.core.tracker import SuccessRateTracker
from knapsack_trl.trainer.prompt_features import (
    pad_prompt_ids,
    pool_hidden_states,
    tokenize_prompts,
    unwrap_backbone,
)
from knapsack_trl.trainer.value_head import (
    METRIC_PREFIX,
    VALUE_HEAD_FILENAME,
    ValueHeadConfig,
    ValueHeadEstimator,
    estimator_prior,
)

CHARS = "0123456789+="
PAD = 0
DIFFICULTY = {1: 0.85, 2: 0.45, 3: 0.1}  # success rate by operand digits: visible in the prompt text


def tiny_llama(seed: int = 0, hidden: int = 32) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(CHARS) + 2,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=PAD,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask for character prompts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor([2 + CHARS.index(c) for c in p])
        mask[i, width - len(p) :] = 1
    return ids, mask


def addition_prompts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``a+b=`` problems cycling through 1-3 digit operands, with their true success rates."""
    rng = np.random.default_rng(seed)
    prompts, rates = [], []
    for i in range(n):
        d = 1 + i % 3
        a = rng.integers(0 if d == 1 else 10 ** (d - 1), 10**d)
        b = rng.integers(0, 10**d)
        prompts.append(f"{a}+{b}=")
        rates.append(DIFFICULTY[d])
    return prompts, np.asarray(rates)


def policy_loss_and_grads(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor):
    model.zero_grad(set_to_none=True)
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach().clone(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def trained_estimator(model, seed: int = 0, head_type: str = "mlp", n_train: int = 96) -> ValueHeadEstimator:
    est = ValueHeadEstimator.from_model(model, ValueHeadConfig(head_type=head_type, seed=seed))
    prompts, rates = addition_prompts(n_train, seed=seed + 10)
    rng = np.random.default_rng(seed)
    for start in range(0, n_train, 16):
        ids, mask = encode(prompts[start : start + 16])
        batch = rates[start : start + 16]
        est.update(est.features(model, ids, mask), rng.binomial(8, batch), np.full(batch.size, 8))
    return est


def test_no_leak_into_policy_loss_gradients_params_or_rng():
    model = tiny_llama()
    model.train()
    ids, mask = encode(["12+7=", "3+4=", "123+456="])
    loss_before, grads_before = policy_loss_and_grads(model, ids, mask)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng_before = torch.get_rng_state()

    est = ValueHeadEstimator.from_model(model, ValueHeadConfig(seed=3))
    with torch.enable_grad():
        feats = est.features(model, ids, mask)
        assert not feats.requires_grad and feats.dtype == torch.float32
        est.predict(feats)
        metrics = est.update(feats, np.array([1, 4, 0]), np.array([4, 4, 4]))
    assert metrics[METRIC_PREFIX + "loss"] > 0

    assert torch.equal(torch.get_rng_state(), rng_before)  # sampling randomness untouched
    assert all(m.training for m in model.modules())  # train mode restored everywhere
    for n, p in model.named_parameters():
        assert torch.equal(p, params_before[n])
        assert torch.equal(p.grad, grads_before[n])  # the head never zeroes or adds to policy grads
    assert not any(p is q for p in est.head.parameters() for q in model.parameters())

    loss_after, grads_after = policy_loss_and_grads(model, ids, mask)
    assert torch.equal(loss_after, loss_before)
    for n, g in grads_after.items():
        assert torch.equal(g, grads_before[n])


def test_features_pool_the_chosen_layer_and_ignore_left_padding():
    model = tiny_llama()
    est = ValueHeadEstimator.from_model(model)
    ids, mask = encode(["7=", "12+34=", "123+456="])
    batched = est.features(model, ids, mask)
    alone = est.features(model, *encode(["7="]))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    assert batched.shape == (3, model.config.hidden_size)
    assert est.features(model, ids[:0], mask[:0]).shape == (0, model.config.hidden_size)

    embed_est = ValueHeadEstimator.from_model(model, ValueHeadConfig(layer=0))
    expected = pool_hidden_states(model.model.embed_tokens(ids), mask)
    torch.testing.assert_close(embed_est.features(model, ids, mask), expected)
    chunked = ValueHeadEstimator.from_model(model, ValueHeadConfig(forward_batch_size=1))
    torch.testing.assert_close(chunked.features(model, ids, mask), batched, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
@pytest.mark.parametrize("seed", [0, 1])
def test_head_beats_constant_priors_on_held_out_prompts(head_type, seed):
    model = tiny_llama(seed=seed)
    est = trained_estimator(model, seed=seed, head_type=head_type, n_train=192)
    prompts, rates = addition_prompts(128, seed=seed + 100)
    rng = np.random.default_rng(seed + 1000)
    successes, counts = rng.binomial(8, rates), np.full(rates.size, 8)
    head = calibration_metrics(est.predict(est.features(model, *encode(prompts))), successes, counts)
    half = calibration_metrics(np.full(rates.size, 0.5), successes, counts)
    train_mean = calibration_metrics(
        np.full(rates.size, est.num_successes / est.num_rollouts), successes, counts
    )
    assert head["brier"] < train_mean["brier"] - 0.04
    assert head["brier"] < half["brier"] - 0.04


RARE = np.array([0.25, 0.05, 0.02])  # success rate by difficulty class: base rate about 0.1


def large_norm_features(n: int, rng: np.random.Generator, dim: int = 576) -> tuple[torch.Tensor, np.ndarray]:
    """Pooled states shaped like a real model's (SmolLM2-135M: 576-d, norms in the hundreds, a few
    dimensions holding much of the variance) with the difficulty class along one ordinary direction."""
    shape = np.random.default_rng(0)
    spread = np.exp(shape.normal(0, 1.5, size=dim))
    spread[:2] *= 30
    common = shape.normal(size=dim)
    common *= 600 / np.linalg.norm(common)
    signal = shape.normal(size=dim) * np.median(spread) * 1.5
    k = rng.integers(0, 3, size=n)
    x = common + rng.normal(size=(n, dim)) * spread + (k - 1)[:, None] * signal
    return torch.tensor(x, dtype=torch.float32), RARE[k]


def tiny_model_features(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """The tiny Llama's pooled states of 1-3 digit sums (difficulty visible in the text), rare successes."""
    prompts, _ = addition_prompts(n, seed=int(rng.integers(1 << 30)))
    model = tiny_llama()
    feats = pool_hidden_states(
        model.model(*encode(prompts), output_hidden_states=True).hidden_states[-1], None
    )
    digits = np.array([len(p.split("+")[0]) for p in prompts])
    return feats.detach(), RARE[digits - 1]


def ranking_auc(p: np.ndarray, rate: np.ndarray) -> float:
    """P(an easiest-class prompt is predicted above a harder one), ties half."""
    pos, neg = p[rate == rate.max()], p[rate < rate.max()]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


@pytest.mark.parametrize("make", [large_norm_features, tiny_model_features], ids=["large-norm", "tiny-llama"])
@pytest.mark.parametrize("batches", [1, 8])
@pytest.mark.parametrize("head_type", ["mlp", "linear"])
def test_head_on_rare_successes_ranks_held_out_prompts(make, batches, head_type):
    """The collapse seen with SmolLM2 (every unseen prompt at the 0.001 floor after one update on a batch
    with success rate 0.094): with rare successes the head must stay calibrated in the mean and rank."""
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        x, rate = make(16 * batches + 300, rng)
        est = ValueHeadEstimator(x.shape[1], ValueHeadConfig(head_type=head_type, seed=seed))
        observed = []
        for b in range(batches):
            rows = slice(16 * b, 16 * (b + 1))
            successes = rng.binomial(8, rate[rows])
            observed.append(successes.sum() / (8 * 16))
            est.update(x[rows], successes, np.full(16, 8))
        p = est.predict(x[16 * batches :])
        held_out = rate[16 * batches :]
        assert ranking_auc(p, held_out) > (0.65 if batches == 1 else 0.8), seed  # 1 batch: ~13 successes
        assert np.mean(p <= 1.0001e-3) < 0.05, seed  # no prompt here has p below 0.02
        assert abs(p.mean() - np.mean(observed)) < 0.5 * np.mean(observed), seed


def test_untrained_head_predicts_one_half_and_is_not_ready():
    model = tiny_llama()
    est = ValueHeadEstimator.from_model(model)
    feats = est.features(model, *encode(["1+2=", "99+1="]))
    np.testing.assert_array_equal(est.predict(feats), [0.5, 0.5])
    assert not est.ready and est.predict_or_none(feats) is None
    est.update(feats, [1, 0], [2, 2])
    assert est.ready and est.predict_or_none(feats) is not None


def test_update_metrics_score_predictions_made_before_the_update():
    model = tiny_llama()
    est = ValueHeadEstimator.from_model(model)
    feats = est.features(model, *encode(["1+2=", "99+1=", "5+5="]))
    m = est.update(feats, np.array([3, 0, 0]), np.array([4, 4, 0]))  # the empty group is ignored
    assert set(m) == {
        METRIC_PREFIX + k
        for k in (
            "brier",
            "brier_constant",
            "loss",
            "loss_after",
            "mean_pred",
            "mean_obs",
            "ece",
            "num_updates",
        )
    }
    assert m[METRIC_PREFIX + "mean_pred"] == pytest.approx(0.5)
    assert m[METRIC_PREFIX + "mean_obs"] == pytest.approx(3 / 8)
    assert m[METRIC_PREFIX + "brier"] == pytest.approx(0.25)
    assert m[METRIC_PREFIX + "loss_after"] < m[METRIC_PREFIX + "loss"]
    assert est.num_rollouts == 8 and est.num_successes == 3
    with pytest.raises(ValueError, match="successes"):
        est.update(feats, np.array([5, 0, 0]), np.array([4, 4, 4]))


def test_replay_buffer_keeps_the_latest_prompts():
    est = ValueHeadEstimator(8, ValueHeadConfig(replay_size=5))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 8, generator=gen) for _ in range(3)]
    for feats in batches:
        est.update(feats, [0, 1, 2], [2, 2, 2])
    replay = est.state_dict()["replay"]
    assert torch.equal(replay["features"], torch.cat(batches)[-5:])
    assert replay["counts"].tolist() == [2.0] * 5
    big = torch.randn(7, 8, generator=gen)
    est.update(big, [1] * 7, [2] * 7)  # a batch larger than the buffer is kept whole for its update
    assert est.state_dict()["replay"]["features"].shape[0] == 7


def test_layer_out_of_range_names_the_field():
    with pytest.raises(ValueError, match="value_head_layer=5 is out of range"):
        ValueHeadEstimator.from_model(tiny_llama(), ValueHeadConfig(layer=5))
    assert ValueHeadEstimator.from_model(tiny_llama(), ValueHeadConfig(layer=-3)).config.layer == -3


def test_calibration_metrics_by_hand():
    m = calibration_metrics(np.array([0.2, 0.9]), np.array([1, 3]), np.array([2, 4]))
    # rollouts: 0.2 vs (1, 0), 0.9 vs (1, 1, 1, 0)
    brier = ((0.8**2 + 0.2**2) + (3 * 0.1**2 + 0.9**2)) / 6
    assert m["brier"] == pytest.approx(brier)
    assert m["mean_pred"] == pytest.approx((0.4 + 3.6) / 6)
    assert m["mean_obs"] == pytest.approx(4 / 6)
    assert m["ece"] == pytest.approx((abs(0.4 - 1) + abs(3.6 - 3)) / 6)


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = tiny_llama()
    est = trained_estimator(model, n_train=48)
    path = est.save(tmp_path)
    assert path == tmp_path / VALUE_HEAD_FILENAME

    restored = ValueHeadEstimator(model.config.hidden_size, ValueHeadConfig(head_type="linear", seed=9))
    assert restored.load(tmp_path)
    assert restored.config == est.config and restored.fingerprint() == est.fingerprint()
    feats = est.features(model, *encode(["1+2=", "45+67=", "100+999="]))
    np.testing.assert_array_equal(restored.predict(feats), est.predict(feats))
    m1 = est.update(feats, [2, 1, 0], [4, 4, 4])
    m2 = restored.update(feats, [2, 1, 0], [4, 4, 4])
    assert m1 == m2
    np.testing.assert_array_equal(restored.predict(feats), est.predict(feats))
    assert restored.fingerprint() == est.fingerprint()
    assert not ValueHeadEstimator(4).load(tmp_path / "missing")
    retired = {**est.state_dict(), "version": 1}  # written before inputs were scaled per dimension
    torch.save(retired, tmp_path / VALUE_HEAD_FILENAME)
    fresh = ValueHeadEstimator(model.config.hidden_size)
    assert not fresh.load(tmp_path) and fresh.num_updates == 0


def test_identical_construction_and_updates_across_processes_by_seed():
    a, b = ValueHeadEstimator(16, ValueHeadConfig(seed=5)), ValueHeadEstimator(16, ValueHeadConfig(seed=5))
    assert a.fingerprint() == b.fingerprint()
    feats = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    for est in (a, b):
        est.update(feats, [0, 1, 2, 3, 4, 4], [4] * 6)
    assert a.fingerprint() == b.fingerprint()
    assert (
        ValueHeadEstimator(16, ValueHeadConfig(seed=6)).fingerprint() != ValueHeadEstimator(16).fingerprint()
    )


def test_peft_model_uses_adapted_weights_without_grad():
    peft = pytest.importorskip("peft")
    model = tiny_llama()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=torch.Generator().manual_seed(1))
    assert isinstance(unwrap_backbone(lora), type(model.model))
    ids, mask = encode(["12+7=", "3+4="])
    est = ValueHeadEstimator.from_model(lora)
    feats = est.features(lora, ids, mask)
    assert not feats.requires_grad
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        adapted = lora(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, output_hidden_states=True
        )
        with lora.disable_adapter():
            base = lora(
                input_ids=ids, attention_mask=mask, position_ids=position_ids, output_hidden_states=True
            )
    torch.testing.assert_close(feats, pool_hidden_states(adapted.hidden_states[-1], mask))
    assert not torch.allclose(feats, pool_hidden_states(base.hidden_states[-1], mask))
    est.update(feats, [1, 2], [2, 2])
    assert all(p.grad is None for p in lora.parameters())


def test_unwrap_backbone_through_a_ddp_style_wrapper():
    model = tiny_llama()
    wrapper = torch.nn.Module()
    wrapper.module = model
    assert unwrap_backbone(wrapper) is model.model


def test_estimator_prior_modes_feed_the_allocator():
    tracker = SuccessRateTracker(window=16, prior_strength=4.0, prior_mean=0.5)
    tracker.observe(["a"] * 4, [1, 0, 0, 0])  # seen, mixed: 1 of 4
    allocator = KnapsackRolloutAllocator(
        AllocatorConfig(rule="buckets", n_min=2, n_max=16, solver="greedy"), tracker
    )
    ids = ["a", "new1", "new2"]
    head_p = np.array([0.9, 0.3, 0.95])
    n_obs = tracker.stats(ids).num_observations

    assert estimator_prior("history", head_p, n_obs) is None
    assert estimator_prior("blend", None, n_obs) is None
    blend = estimator_prior("blend", head_p, n_obs)
    np.testing.assert_array_equal(blend, head_p)
    only_new = estimator_prior("value_head", head_p, n_obs)
    assert np.isnan(only_new[0]) and only_new[1] == 0.3

    alloc = allocator.allocate(ids, 24, prior_success_rate=blend)
    np.testing.assert_allclose(alloc.success_rate, [(1 + 4 * 0.9) / (4 + 4), 0.3, 0.95])
    alloc = allocator.allocate(ids, 24, prior_success_rate=only_new)
    np.testing.assert_allclose(alloc.success_rate, [(1 + 4 * 0.5) / (4 + 4), 0.3, 0.95])
    assert np.isnan(allocator.allocate(ids, 24).success_rate[1:]).all()  # history: unseen stay unknown
    with pytest.raises(ValueError, match="value_estimator='oracle' is not known"):
        estimator_prior("oracle", head_p, n_obs)
    # The posterior rule: the head's p counts as prior_strength pseudo-outcomes on the population prior.
    posterior = KnapsackRolloutAllocator(AllocatorConfig(n_min=2, n_max=16, solver="greedy"), tracker)
    post = posterior.population_prior().posterior(
        np.zeros(3), np.zeros(3), prior_mean=head_p, prior_strength=4.0
    )
    out = posterior.allocate(ids, 24, prior_success_rate=only_new)
    np.testing.assert_allclose(out.success_rate[1:], post.mean[1:])
    assert out.success_rate[1] < out.success_rate[2]  # 0.3 and 0.95 pull the same population prior apart


def test_group_successes_skip_unscorable_rollouts():
    rewards = torch.tensor([1.0, 0.0, float("nan"), 1.0, 0.2, 0.9, 0.7])
    s, n = group_successes(rewards, [3, 0, 4], threshold=0.5)
    np.testing.assert_array_equal(s, [1, 0, 3])
    np.testing.assert_array_equal(n, [2, 0, 4])
    with pytest.raises(ValueError, match="sum"):
        group_successes(rewards, [3, 3])


def test_group_mean_rewards_by_hand():
    """Each group's mean over its scorable rollouts; empty or wholly unscorable groups are NaN."""
    nan = float("nan")
    means = group_mean_rewards(np.array([1.0, 0.0, nan, 0.25, 0.75, nan]), [3, 0, 2, 1])
    np.testing.assert_array_equal(means, [0.5, nan, 0.5, nan])
    with pytest.raises(ValueError, match="sum"):
        group_mean_rewards(np.zeros(3), [1, 1])


def test_config_from_trainer_args_and_validation(tmp_path):
    from knapsack_trl import KnapsackGRPOConfig

    args = KnapsackGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        seed=17,
        knapsack_value_head_type="linear",
        knapsack_value_head_layer=-2,
        knapsack_value_head_lr=1e-2,
    )
    cfg = args.knapsack_value_head_config()
    assert (cfg.head_type, cfg.layer, cfg.lr, cfg.seed, cfg.prior_strength) == ("linear", -2, 1e-2, 17, None)
    assert cfg.tracker_prior_strength("blend", 2.0) == 2.0
    assert ValueHeadConfig(prior_strength=6.0).tracker_prior_strength("blend", 2.0) == 6.0
    assert ValueHeadConfig(prior_strength=6.0).tracker_prior_strength("history", 2.0) == 2.0
    with pytest.raises(ValueError, match="value_head_type"):
        ValueHeadConfig(head_type="transformer")
    with pytest.raises(ValueError, match="value_head_lr"):
        ValueHeadConfig(lr=0.0)
    with pytest.raises(ValueError, match="knapsack_value_head_type='transformer'"):
        KnapsackGRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            per_device_train_batch_size=8,
            num_generations=4,
            knapsack_value_head_type="transformer",
        )


def char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<pad>", "<unk>", *CHARS])}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    raw.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>", padding_side="left"
    )
    tok.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    return tok


def test_tokenize_prompts_text_and_conversations():
    tok = char_tokenizer()
    ids, mask = tokenize_prompts(tok, ["1+2=", "13+4="])
    assert ids.shape == mask.shape == (2, 5)
    assert mask[0].tolist() == [0, 1, 1, 1, 1]
    assert tok.decode(ids[1]) == "13+4="
    chat_ids, chat_mask = tokenize_prompts(
        tok, [[{"role": "user", "content": "1+2="}], [{"role": "user", "content": "13+4="}]]
    )
    assert torch.equal(chat_ids, ids) and torch.equal(chat_mask, mask)
    padded, pmask = pad_prompt_ids([[5, 6], [7]], pad_token_id=0)
    assert padded.tolist() == [[5, 6], [0, 7]] and pmask.tolist() == [[1, 1], [0, 1]]


def _worker(rank: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = tiny_llama()
        est = ValueHeadEstimator.from_model(model)
        prompts, _ = addition_prompts(5, seed=0)
        feats = est.features(model, *encode(prompts), shared_inputs=True)  # each rank runs 3 of 5 rows
        est.update(feats, [0, 1, 2, 3, 4], [4] * 5)
        torch.save({"feats": feats, "synced": est.fingerprint()}, f"{result_dir}/{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.multiprocess
def test_two_processes_share_features_and_stay_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    model = tiny_llama()
    prompts, _ = addition_prompts(5, seed=0)
    single = ValueHeadEstimator.from_model(model).features(model, *encode(prompts))
    assert torch.equal(r0["feats"], r1["feats"])
    torch.testing.assert_close(r0["feats"], single, atol=1e-5, rtol=1e-5)
    assert r0["synced"] == r1["synced"]  # identical data, identical steps: identical heads, no broadcast
