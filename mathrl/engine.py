"""
Rollout engines: turn prompt token ids into sampled completions with their per-token sampling log-probs.

The engine interface (what train.py and eval.py call; the vLLM engine of the GPU path implements the same):

    generate(prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=None, progress=False)
        prompts: list of token-id lists (already templated, no padding). Returns [len(prompts)][n] Completion:
        token_ids (the response, including the stop token when it stopped), logprobs (one per token: log-prob of
        the sampled token under the *processed* distribution, i.e. after the vocab mask, temperature and top_p),
        finished (True: stopped at a stop token; False: cut at max_new_tokens), text (decoded, stop token excluded).
        temperature == 0 means greedy. Ids >= vocab_limit (padded LM-head rows) are never produced. Same seed and
        inputs -> same outputs.
    load_weights(model_or_state_dict)
        push the trainer's current weights into the engine (a no-op when the engine shares the trainer's module).
    sleep() / wake_up()
        release / re-acquire the engine's memory around the training phase (no-ops here; vLLM sleep mode).

TransformersEngine runs Hugging Face `generate` on the trainer's own module (no copy), so it needs no weight sync.
Sampling happens inside a logits processor (`_Sampler`) that owns a seeded torch.Generator and records the
log-prob of each drawn token; `generate` itself then runs greedy over a one-hot score row. Why: HF applies its own
temperature/top-p warpers *after* custom processors, and `output_scores` would keep (steps, N, V) floats alive
(120 GB at the paper's 3072 x 64 x 151,936); this way memory stays at one (N, V) row per step, the global RNG is
untouched (a resumed run replays exactly) and the recorded log-probs are those of the distribution sampled from.
"""

from dataclasses import dataclass

import torch


@dataclass
class Completion:
    token_ids: list[int]  # response tokens (stop token included when finished)
    logprobs: list[float]  # per token: sampling log-prob under the processed distribution
    finished: bool  # True: stopped at a stop token; False: cut at max_new_tokens
    text: str  # decoded response, stop token excluded


def process_logits(
    logits: torch.Tensor, temperature: float, top_p: float, vocab_limit: int | None = None
) -> torch.Tensor:
    """Log-probs of the distribution actually sampled from: vocab mask -> temperature -> top-p (nucleus) -> renormalise.

    logits: (N, V) -> (N, V) log-probs, -inf outside the support. temperature == 0 keeps the untempered distribution
    (greedy decoding takes its argmax). top_p keeps the smallest set of most likely tokens whose mass reaches top_p
    (Holtzman et al., arXiv:1904.09751v2 Sec. 3.1), always at least the top token.
    """
    s = logits.float()
    if vocab_limit is not None and vocab_limit < s.shape[-1]:
        s = s.clone()
        s[:, vocab_limit:] = float("-inf")  # padded vocab rows: never sampled
    if temperature > 0:
        s = s / temperature
    logp = torch.log_softmax(s, dim=-1)  # (N, V)
    if 0 < top_p < 1 and temperature > 0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        mass_before = sorted_logp.exp().cumsum(dim=-1) - sorted_logp.exp()  # probability mass of strictly better tokens
        drop_sorted = mass_before >= top_p  # the top token has mass_before = 0, so it is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp


class _Sampler:
    """HF logits processor that draws the next token itself and returns a score row with only that token finite.

    Called once per decoding step with the running input_ids (N, L) and the raw next-token logits (N, V).
    """

    def __init__(self, temperature: float, top_p: float, vocab_limit: int | None, generator: torch.Generator):
        self.temperature, self.top_p, self.vocab_limit, self.generator = temperature, top_p, vocab_limit, generator
        self.step_logprobs: list[torch.Tensor] = []  # one (N,) tensor per step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = process_logits(scores, self.temperature, self.top_p, self.vocab_limit)  # (N, V)
        if self.temperature > 0:
            token = torch.multinomial(logp.exp(), 1, generator=self.generator)  # (N, 1)
        else:
            token = logp.argmax(dim=-1, keepdim=True)  # (N, 1) greedy
        self.step_logprobs.append(logp.gather(-1, token).squeeze(-1))
        one_hot = torch.full_like(scores, float("-inf"))
        return one_hot.scatter(-1, token, 0.0)  # greedy generate() picks exactly `token`


class TransformersEngine:
    """Rollouts with Hugging Face `generate` on the trainer's module (left padding, batched, KV cache).

    model: a transformers causal LM (shared, not copied); tokenizer: its tokenizer (decode + pad id);
    batch_size: sequences per generate() call; vocab_limit: ids >= it are never sampled (Qwen2.5 pads its LM head
    from 151,665 tokenizer ids to 151,936 rows); stop_token_ids: ids that end a response (default: the tokenizer's
    and the model's EOS, the papers' "stop at EOS only").
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 64,
        vocab_limit: int | None = None,
        stop_token_ids: list[int] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: need at least 1 sequence per generate() call")
        self.model, self.tokenizer, self.batch_size, self.vocab_limit = model, tokenizer, batch_size, vocab_limit
        if stop_token_ids is None:
            stop_token_ids = _as_list(tokenizer.eos_token_id) + _as_list(getattr(model.config, "eos_token_id", None))
        self.stop_token_ids = sorted(set(stop_token_ids))
        if not self.stop_token_ids:
            raise ValueError("no stop token: the tokenizer and model config define no EOS; pass stop_token_ids")
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.stop_token_ids[0]

    def load_weights(self, model_or_state_dict) -> None:
        """No-op when given the shared module; otherwise copy the weights in (a state dict or another module)."""
        if model_or_state_dict is self.model:
            return
        state = model_or_state_dict if isinstance(model_or_state_dict, dict) else model_or_state_dict.state_dict()
        self.model.load_state_dict(state)

    def sleep(self) -> None:
        """Nothing to release: the module is the trainer's own."""

    def wake_up(self) -> None:
        """Nothing to re-acquire."""

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """n completions per prompt, [len(prompts)][n]; see the module docstring for the contract."""
        check_generate_args(prompts, n, max_new_tokens, temperature, top_p)
        from tqdm import tqdm

        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        flat = [p for p in prompts for _ in range(n)]  # sample j of prompt i sits at i * n + j
        was_training = self.model.training
        self.model.eval()
        results: list[Completion] = []
        try:
            for start in tqdm(range(0, len(flat), self.batch_size), disable=not progress, desc="generate", unit="batch"):
                batch = flat[start : start + self.batch_size]
                results += self._generate_batch(batch, max_new_tokens, temperature, top_p, generator, device)
        finally:
            self.model.train(was_training)
        return [results[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, batch, max_new_tokens, temperature, top_p, generator, device) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)  # (N, L) left-padded
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (N, L)
        for row, p in enumerate(batch):
            input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[row, width - len(p) :] = 1
        sampler = _Sampler(temperature, top_p, self.vocab_limit, generator)
        config = GenerationConfig(  # a fresh config: no warpers or penalties from the model's generation_config
            max_new_tokens=max_new_tokens,
            do_sample=False,  # the sampler has already drawn; greedy over its one-hot row keeps that draw
            num_beams=1,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
        )
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
        )  # (N, L + steps)
        new_tokens = out[:, width:].tolist()
        logprobs = torch.stack(sampler.step_logprobs, dim=1).tolist()  # (N, steps)
        stop = set(self.stop_token_ids)
        completions = []
        for tokens, lps in zip(new_tokens, logprobs):
            end = next((t + 1 for t, tok in enumerate(tokens) if tok in stop), None)
            finished = end is not None
            tokens = tokens[:end] if finished else tokens[:max_new_tokens]
            text_tokens = tokens[:-1] if finished else tokens
            text = self.tokenizer.decode(text_tokens, skip_special_tokens=True)  # as vLLM by default
            completions.append(Completion(tokens, lps[: len(tokens)], finished, text))
        return completions


def check_generate_args(prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """The argument checks of every engine's generate(): clear errors before any work."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"generate needs n >= 1 and max_new_tokens >= 1 (got n={n}, max_new_tokens={max_new_tokens})")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1] (got {temperature}, {top_p})")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"empty prompt: prompt {i} has 0 tokens, every prompt needs at least one")


def _as_list(x) -> list[int]:
    """None -> [], an int -> [int], a list -> itself."""
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]
