"""Teacher-forced measures for selection steps: effect on the issue's axis, and drift elsewhere.

Generating and judging text is the honest end measure, but it is slow on a CPU and gives one bit
per prompt. Calibrating many (algorithm, layer, strength) candidates needs smooth, cheap numbers:

- **effect**: per target pair, the change (steered minus base) in the log-odds of the positive
  over the negative completion, each the mean token log-probability over its first
  ``EFFECT_TOKENS`` tokens. Only the opening counts because that is where behaviours such as a
  refusal are decided; scoring whole completions let late tokens dominate and ranked layers
  unlike generation did (measured on SmolLM2-135M during the first compile's development).
- **drift**: the mean next-token KL divergence KL(base || steered) over every position of the
  neutral prompts (chat-formatted, prompt tokens only): how much steering changes what the model
  would say where it should change nothing.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from ..capture.activations import encode_completion, encode_prompt, position_ids
from ..capture.prefill_sharing import can_share_forced_pass, sharing_forced_pass
from ..capture.shared_prefix import PrefixPass, call_prefix, run_prefix, shared_tokens
from ..common.batching import left_pad
from ..common.forward_arguments import forward_takes
from ..common.prefix_replay import PrefixReplay
from .branched_rows import branch_inputs, branch_means, branch_units
from .untouched_rows import active_skipping, touched_rows

EFFECT_TOKENS = 8
# A row whose gated steering adds at most this (largest entry of the MLP output's delta) at every position is
# the base model's to float32: 1e-6 moves no logit beyond rounding in practice; closed SiLU gates add ~1e-20.
UNTOUCHED = 1e-6


RECORD = "record"   # ``start`` of a pass that records the base hidden states for later replays


def forward_rows(model, rows: Sequence[list[int]], pad_id: int, replay: PrefixReplay | None, key, start,
                 prefix: PrefixPass | None = None, branches: Sequence[Sequence[int]] | None = None,
                 replay_rows: list[int] | None = None, read: Callable | None = None,
                 **extra) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One scoring pass over token rows, recording or replaying the base prefix when asked
    (``common.prefix_replay``): ``start`` is ``RECORD`` for the base pass, else the adapter's first layer;
    ``replay_rows``: ``rows`` are those rows of the batch recorded under ``key``. With a ``prefix``
    (``capture.shared_prefix``: every row starts with its tokens) only the rows' own tokens run, after the prefix's
    KV cache. With ``branches`` each row ends with completions of those lengths that all follow its prompt
    (``branched_rows``). ``read``: called with the pass's inputs instead of the model (e.g.
    ``SteeredModel.delta_sizes``). Without a ``replay``, inside ``untouched_rows.skipping_untouched`` the rows the
    steering leaves untouched may come back as NaN logits (see there). Returns (logits or what ``read`` gave, the
    token ids that ran, their attention mask)."""
    ids, attention, ran, kwargs = _pass_inputs(model, rows, pad_id, prefix, branches, extra)
    run = read if read is not None else (lambda **inputs: model(**inputs).logits)
    if replay is None:   # inside ``sharing_prefill`` (the evaluation), arms share the blocks below their steering
        skipping = active_skipping(model) if read is None and branches is None else None
        if skipping is not None and can_share_forced_pass(model, ids, attention):
            logits = _touched_rows_only(model, rows, pad_id, prefix, extra, ids, attention, ran, skipping)
            if logits is not None:
                return logits, ids, ran
        with sharing_forced_pass(model, ids, attention):
            logits = run(**kwargs)
        if skipping is not None:
            skipping.check_finite(logits)
        return logits, ids, ran
    with (replay.recording(key) if start == RECORD else replay.replaying(key, start, replay_rows)):
        return run(**kwargs), ids, ran


def _pass_inputs(model, rows: Sequence[list[int]], pad_id: int, prefix: PrefixPass | None,
                 branches: Sequence[Sequence[int]] | None, extra: dict
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(token ids, attention mask, the mask of the tokens that run, the model's keyword arguments) of
    :func:`forward_rows`'s pass."""
    device = next(model.parameters()).device
    if prefix is None:
        ids, mask = left_pad(rows, pad_id)
        positions, cache = position_ids(mask), {}
        ran = mask
    else:
        if any(list(row[:prefix.length]) != prefix.tokens for row in rows):
            raise ValueError("a scored row does not start with the shared prefix it is scored after")
        ids, mask, positions, cache = prefix.inputs(model, [list(row[prefix.length:]) for row in rows], pad_id)
        ran = mask[:, prefix.length:]
    attention = mask
    if branches is not None:
        positions, attention = branch_inputs(mask, positions, branches, next(model.parameters()).dtype)
    kwargs = dict(input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                  **extra, **cache, **({"use_cache": bool(cache)} if forward_takes(model, "use_cache") else {}))
    return ids, attention, ran, kwargs


@torch.no_grad()
def _touched_rows_only(model, rows: Sequence[list[int]], pad_id: int, prefix: PrefixPass | None, extra: dict,
                       ids: torch.Tensor, attention: torch.Tensor, ran: torch.Tensor, skipping) -> torch.Tensor | None:
    """``model``'s logits over the recorded batch ``rows`` with the untouched rows not run but NaN
    (``untouched_rows``); None when every row is touched or the prefix is (the caller runs the batch whole)."""
    skipping.rows += len(rows)
    if not skipping.prefix_untouched(None if prefix is None else prefix.tokens, UNTOUCHED):
        return None
    _, _, _, check = _pass_inputs(model, rows, pad_id, prefix, None, {})
    with sharing_forced_pass(model, ids, attention):
        touched = touched_rows(model.delta_sizes(**check), ran, UNTOUCHED)
    if len(touched) == len(rows):
        return None
    keep = extra.get("logits_to_keep")
    positions = min(keep, ids.shape[1]) if keep else ids.shape[1]
    vocab = model.get_output_embeddings().weight.shape[0]
    out = torch.full((len(rows), positions, vocab), float("nan"), device=next(model.parameters()).device)
    if touched:
        _, _, _, kwargs = _pass_inputs(model, [rows[r] for r in touched], pad_id, prefix, None, extra)
        with sharing_forced_pass(model, ids, attention, rows=touched):
            logits = model(**kwargs).logits.float()
        skipping.check_finite(logits)
        out[touched, positions - logits.shape[1]:] = logits
    skipping.skipped += len(rows) - len(touched)
    return out


def batch_order(lengths: Sequence[int], batch_size: int, by_length: bool) -> list[list[int]]:
    """Indices per batch: in the given order, or sorted by length (stable) so that a batch's rows pad little.
    Sorting is for passes whose numbers are only compared with each other (a scorer's base and steered passes
    batch alike): the left padding of the held-out sets was a quarter of the scored positions (48% of the
    val neutral prompts' positions in the refusal recipe, 3384 real of 5008)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if by_length else list(range(len(lengths)))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def completion_logprobs(model, tokenizer, items: Sequence[tuple[str, str]], max_tokens: int = EFFECT_TOKENS,
                        batch_size: int = 16, replay: PrefixReplay | None = None, tag: str = "",
                        start: int | str | None = None, by_length: bool = False,
                        prefix: PrefixPass | None = None, share_prefix: bool = False,
                        branch: bool = False) -> torch.Tensor:
    """Mean log-probability of each completion's first ``max_tokens`` tokens given its prompt, [N].
    ``replay``/``tag``/``start``/``prefix``: see ``forward_rows`` (the batches of one ``tag`` must be the same every
    call, and so must the prefix's length); ``by_length``: batch rows of similar length (``batch_order``);
    ``share_prefix``: without a ``prefix``, run the tokens all the prompts start with once, as a prefix of this
    call's own (``capture.shared_prefix.shared_tokens``; the same numbers to rounding); ``branch``: the completions
    of one prompt in one row, after one copy of it, where the model allows (``branched_rows``; the same numbers to
    rounding)."""
    encoded = [(encode_prompt(tokenizer, p), encode_completion(tokenizer, c)[:max_tokens]) for p, c in items]
    if any(not completion for _, completion in encoded):
        raise ValueError("every scored item needs a non-empty completion")
    units = branch_units(model, encoded) if branch else None
    if share_prefix and prefix is None:
        extra = max(sum(len(encoded[i][1]) for i in unit) for unit in units) if units else max_tokens
        prefix = call_prefix(model, [p for p, _ in encoded], extra)
    if prefix is not None and any(len(p) <= prefix.length for p, _ in encoded):
        raise ValueError("the shared prefix must leave every prompt at least its last token")
    if units is not None:
        return _branched_logprobs(model, tokenizer.pad_token_id, encoded, units, batch_size, replay, tag, start,
                                  by_length, prefix)
    device = next(model.parameters()).device
    out = torch.zeros(len(items))
    keeps_last = forward_takes(model, "logits_to_keep")
    for number, batch in enumerate(batch_order([len(p) + len(c) for p, c in encoded], batch_size, by_length)):
        # Left padded, so every completion ends the row: only the last positions' logits are needed
        # (the vocabulary projection and log-softmax over every prompt position were a third of the time).
        keep = max(len(encoded[i][1]) for i in batch) + 1
        logits, ids, _ = forward_rows(model, [encoded[i][0] + encoded[i][1] for i in batch], tokenizer.pad_token_id,
                                  replay, (tag, number), start, prefix,
                                  **({"logits_to_keep": keep} if keeps_last else {}))
        logits = logits.float()
        keep = logits.shape[1]   # every position when the model cannot keep only the last ones
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, -keep + 1:, None].to(device))[..., 0].cpu()
        for row, i in enumerate(batch):
            out[i] = logp[row, -len(encoded[i][1]):].mean()
    return out


def _branched_logprobs(model, pad_id: int, encoded: Sequence[tuple[list[int], list[int]]], units: list[list[int]],
                       batch_size: int, replay: PrefixReplay | None, tag: str, start, by_length: bool,
                       prefix: PrefixPass | None) -> torch.Tensor:
    """:func:`completion_logprobs` with one row per unit: a prompt and its items' completions (``branched_rows``)."""
    out = torch.zeros(len(encoded))
    keeps_last = forward_takes(model, "logits_to_keep")
    widths = [len(encoded[unit[0]][0]) + sum(len(encoded[i][1]) for i in unit) for unit in units]
    for number, batch in enumerate(batch_order(widths, batch_size, by_length)):
        lengths = [[len(encoded[i][1]) for i in units[k]] for k in batch]
        rows = [encoded[units[k][0]][0] + [t for i in units[k] for t in encoded[i][1]] for k in batch]
        keep = max(map(sum, lengths)) + 1
        logits, ids, _ = forward_rows(model, rows, pad_id, replay, (tag, number), start, prefix, branches=lengths,
                                      **({"logits_to_keep": keep} if keeps_last else {}))
        logp = torch.log_softmax(logits.float(), -1)
        for row, k in enumerate(batch):
            out[units[k]] = branch_means(logp[row], ids[row], lengths[row]).cpu()
    return out


def preference(model, tokenizer, prompts: Sequence[str], positives: Sequence[str], negatives: Sequence[str],
               batch_size: int = 16) -> torch.Tensor:
    """Per-prompt log-odds of the positive over the negative completion's opening, [N]."""
    logp = completion_logprobs(model, tokenizer, list(zip(prompts, positives)) + list(zip(prompts, negatives)),
                               batch_size=batch_size)
    return logp[:len(prompts)] - logp[len(prompts):]


@torch.no_grad()
def next_token_logprobs(model, tokenizer, prompts: Sequence[str], batch_size: int = 16,
                        replay: PrefixReplay | None = None, tag: str = "",
                        start: int | str | None = None, share_prefix: bool = False) -> list[torch.Tensor]:
    """Log-softmax over the vocabulary at every prompt position, one [len, V] tensor per prompt.
    ``share_prefix``: run the tokens all the prompts start with once (``capture.shared_prefix``); their
    positions' log-probabilities, the same in every row, are that pass's."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    prefix = call_prefix(model, encoded, 0, logprobs=True) if share_prefix else None
    head = prefix.logprobs.cpu() if prefix is not None else None
    out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    for number, batch in enumerate(batch_order([len(e) for e in encoded], batch_size, by_length=False)):
        logits, _, _ = forward_rows(model, [encoded[i] for i in batch], tokenizer.pad_token_id, replay,
                                    (tag, number), start, prefix)
        logp = torch.log_softmax(logits.float(), -1).cpu()
        for row, i in enumerate(batch):
            if head is None:
                out[i] = logp[row, -len(encoded[i]):]
            else:
                out[i] = torch.cat([head, logp[row, -(len(encoded[i]) - prefix.length):]])
    return out


def mean_kl(base: Sequence[torch.Tensor], steered: Sequence[torch.Tensor]) -> float:
    """Mean over all positions of KL(base || steered), in nats."""
    total, count = 0.0, 0
    for p, q in zip(base, steered):
        total += float((p.exp() * (p - q)).sum(-1).sum())
        count += p.shape[0]
    return total / max(count, 1)


class NeutralDrift:
    """The mean next-token KL(base || steered) over every position of some neutral prompts, against base
    distributions computed once.

    Per position, KL = sum_v p log p - sum_v p log q: the base probabilities ``p`` and their first term are
    kept, so a steered pass costs one log-softmax and one dot product per position. Only real positions
    are kept and rows are batched by length (``batch_order``). Measured on the refusal recipe's 64 val
    neutral prompts (SmolLM2-135M, 2 cores): the left padding had been 48% of the positions, and the old
    way (:func:`next_token_logprobs` + :func:`mean_kl`) log-softmaxed the padded batches and exponentiated
    the base again in every steered pass. The same quantity, rounded differently in the last digits.

    Given the steered model's gates (``drift(gates=...)``: an adapter whose only steering is gated neurons), a row
    whose steering stays below ``UNTOUCHED`` at every position is the base model's row: its KL is zero to float32
    and its pass above the gates is skipped. A first pass from the replayed layer to the last gated one reads the
    steering's size (``SteeredModel.delta_sizes``); only the touched rows run on, replayed as a narrower batch.
    With the default program on the refusal recipe's val neutral prompts 52 of 64 rows were untouched."""

    def __init__(self, model, tokenizer, prompts: Sequence[str], batch_size: int = 16,
                 replay: PrefixReplay | None = None, tag: str = "neutral", prefix: PrefixPass | None = None,
                 head_inputs: Sequence[torch.Tensor] | None = None, keep_head_inputs: bool = False):
        self.model, self.replay, self.tag = model, replay, tag
        self.pad_id = tokenizer.pad_token_id
        self.encoded = [encode_prompt(tokenizer, p) for p in prompts]
        self.batches = batch_order([len(e) for e in self.encoded], batch_size, by_length=True)
        self.positions = sum(len(e) for e in self.encoded)
        self.shared = 0 if prefix is None else prefix.length
        self.prefix_tokens = [] if prefix is None else list(prefix.tokens)
        self.base_prefix = None if prefix is None else self._base(prefix.logprobs)
        self.base: list[tuple[torch.Tensor, torch.Tensor]] = []   # per batch: p [positions, V], sum p log p
        # with ``keep_head_inputs``, per batch, what entered the vocabulary projection in the base pass, where
        # projecting it again gives the pass's numbers bit for bit (what ``scorer_store`` keeps; ``head_inputs``
        # gives them back); None where it does not
        self.head_inputs: list[torch.Tensor] | None = (list(head_inputs) if head_inputs is not None
                                                       else [] if keep_head_inputs else None)
        for number in range(len(self.batches)):
            if head_inputs is not None:
                self.base.append(self._base(self._projected(number, head_inputs[number])))
                continue
            kept: list[torch.Tensor] = []
            head = model.get_output_embeddings()
            handle = (head.register_forward_pre_hook(lambda module, args: kept.append(args[0].detach()))
                      if self.head_inputs is not None else None)
            try:
                logp = self._logprobs(number, RECORD, prefix)
            finally:
                if handle is not None:
                    handle.remove()
            if self.head_inputs is not None and (len(kept) != 1 or not torch.equal(self._projected(number, kept[0]),
                                                                                     logp)):
                self.head_inputs = None   # the logits are more than the projection (a softcap, a scale): keep none
            if self.head_inputs is not None:
                self.head_inputs.append(kept[0])
            self.base.append(self._base(logp))

    @torch.no_grad()
    def _projected(self, number: int, head_input: torch.Tensor) -> torch.Tensor:
        """:meth:`_logprobs` of the base pass of batch ``number`` from what entered its vocabulary projection."""
        logits = self.model.get_output_embeddings()(head_input)
        lengths = [len(self.encoded[i]) - self.shared for i in self.batches[number]]
        width = logits.shape[1]
        ran = torch.zeros(len(lengths), width, dtype=torch.bool, device=logits.device)
        for row, length in enumerate(lengths):
            ran[row, width - length:] = True
        return torch.log_softmax(logits[ran].float(), -1)

    def serves(self, model, tokenizer, prompts: Sequence[str], batch_size: int, prefix: PrefixPass | None) -> bool:
        """Whether this drift is the one ``NeutralDrift(model, tokenizer, prompts, batch_size, prefix=prefix)`` would
        compute (the same model, rows, batches and shared prefix): a second scorer of the same neutral prompts then
        uses it instead of making the base passes again."""
        return (model is self.model and self.pad_id == tokenizer.pad_token_id
                and [encode_prompt(tokenizer, p) for p in prompts] == self.encoded
                and batch_order([len(e) for e in self.encoded], batch_size, by_length=True) == self.batches
                and ([] if prefix is None else list(prefix.tokens)) == self.prefix_tokens)

    @staticmethod
    def _base(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = logp.exp()
        return p, torch.linalg.vecdot(p, logp)

    @torch.no_grad()
    def _logprobs(self, number: int, start: int | str | None, prefix: PrefixPass | None,
                  rows: list[int] | None = None) -> torch.Tensor:
        """Log-softmax at the real positions of batch ``number`` (after the prefix, if any), [positions, V]; only
        ``rows`` of the batch when given (replayed)."""
        batch = self.batches[number] if rows is None else [self.batches[number][r] for r in rows]
        logits, _, ran = forward_rows(self.model, [self.encoded[i] for i in batch], self.pad_id, self.replay,
                                      (self.tag, number), start, prefix, replay_rows=rows)
        return torch.log_softmax(logits[ran.to(logits.device).bool()].float(), -1)

    @torch.no_grad()
    def _touched_rows(self, number: int, start: int, prefix: PrefixPass | None, gates) -> list[int]:
        """The rows of batch ``number`` where the steering is above ``UNTOUCHED`` somewhere (from ``start``)."""
        sizes, _, ran = forward_rows(self.model, [self.encoded[i] for i in self.batches[number]], self.pad_id,
                                     self.replay, (self.tag, number), start, prefix, read=gates.delta_sizes)
        return touched_rows(sizes, ran, UNTOUCHED)

    def _row_positions(self, number: int, rows: list[int]) -> torch.Tensor:
        """Where ``rows`` of batch ``number`` sit among its real positions (row after row)."""
        lengths = [len(self.encoded[i]) - self.shared for i in self.batches[number]]
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        return torch.cat([torch.arange(starts[r], starts[r] + lengths[r]) for r in rows])

    @staticmethod
    @torch.no_grad()
    def _untouched(prefix: PrefixPass | None, gates, device) -> bool:
        """Whether the shared prefix's own tokens leave the steering below ``UNTOUCHED`` (every row reads them)."""
        if prefix is None:
            return True
        sizes = gates.delta_sizes(input_ids=torch.tensor([prefix.tokens], device=device))
        return bool(sizes) and max(float(v.max()) for v in sizes.values()) <= UNTOUCHED

    def drift(self, start: int | None = None, prefix: PrefixPass | None = None, gates=None) -> float:
        """Mean KL(base || the model as it runs now) in nats; ``start``: see ``forward_rows``; ``prefix``: the shared
        prefix run under the same steering (with its log-probabilities), when the base numbers were computed
        after one: its positions are every row's, so their KL counts once per prompt; ``gates``: the steered
        model, when its only steering is gated neurons (untouched rows are skipped, see the class)."""
        if (prefix.length if prefix is not None else 0) != self.shared:
            raise ValueError(f"drift after a {0 if prefix is None else prefix.length}-token prefix against base "
                             f"numbers computed after {self.shared}")
        total = 0.0
        if prefix is not None:
            p, p_log_p = self.base_prefix
            total += len(self.encoded) * float((p_log_p - torch.linalg.vecdot(p, prefix.logprobs)).sum())
        skipping = (gates is not None and self.replay is not None
                    and self._untouched(prefix, gates, next(self.model.parameters()).device))
        for number, (p, p_log_p) in enumerate(self.base):
            rows = None
            if skipping and self.replay.can_replay((self.tag, number), start):
                rows = self._touched_rows(number, start, prefix, gates)
                if not rows:
                    continue
                if len(rows) == len(self.batches[number]):
                    rows = None
            if rows is not None:
                at = self._row_positions(number, rows)
                p, p_log_p = p[at], p_log_p[at]
            total += float((p_log_p - torch.linalg.vecdot(p, self._logprobs(number, start, prefix, rows))).sum())
        return total / max(self.positions, 1)


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


class HeldOutScorer:
    """Effect and drift of any steering, measured against base numbers computed once.

    Without neutral prompts the drift is NaN (effects only); without target items the effect is empty
    (drift only). Target items are ``(prompt, positive,
    negative)``; ``negative`` may be None (a prompt with only a
    desired completion, e.g. an AdvBench request with a refusal). A sample's effect is the change of
    its log-odds (positive over negative opening) where it has both, and the change of the positive
    opening's log-probability where it has only that.

    With ``replay_layers`` (the layers candidate strategies steer) the base pass keeps the hidden states
    entering those layers, and a steered pass told its first steered layer (``start``) starts there
    (``common.prefix_replay``: the same numbers, bit for bit, for a third to a half less work).

    With ``share_prefix`` (the default) the tokens every scored prompt starts with (a chat template's header and
    default system prompt: 24 of the refusal recipe's ~61-token val rows on SmolLM2) run once per scoring as a
    one-row pass under the same steering (``capture.shared_prefix``), and every batch runs its rows' own tokens
    after that pass's KV cache; the drift counts the prefix positions' KL once per neutral prompt. The same
    quantities as plain rows, rounded differently in the last digits (a one-row pass multiplies other shapes).

    With ``branch`` (the default, where the model's attention allows it) a target's positive and negative
    completion share one row after one copy of its prompt (``branched_rows``); rounded differently again.

    ``drift_from``: another scorer of the same neutral prompts (the compile's library calibration and program
    search score other target items against the same val neutral prompts): its drift's base numbers serve this
    one where they are what this scorer would compute (``NeutralDrift.serves``), the same numbers bit for bit; a
    steered pass then replays what that scorer recorded, so its replay layers must include this one's.
    """

    def __init__(self, model, tokenizer, targets: Sequence[tuple[str, str, str | None]], neutral_prompts: Sequence[str],
                 batch_size: int = 16, replay_layers: Sequence[int] = (), share_prefix: bool = True,
                 branch: bool = True, drift_from: "HeldOutScorer | None" = None, store=None):
        if not targets and not neutral_prompts:
            raise ValueError("held-out scoring needs target items or neutral prompts")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.prompts, self.positives, self.negatives = (map(list, zip(*targets)) if targets else ([], [], []))
        self.paired = [i for i, n in enumerate(self.negatives) if n is not None]
        self.neutral = list(neutral_prompts)
        self.replay = PrefixReplay(model, replay_layers) if replay_layers else None
        self.prefix_tokens = self._shared_prefix() if share_prefix else []
        self.branched = branch and branch_units(model, self._encoded_targets()) is not None
        base_prefix = self._prefix()
        if base_prefix is None:
            self.prefix_tokens = []   # a cache form the shared prefix does not handle: score plain rows
        shared_drift = drift_from.drift_reference if drift_from is not None and self.neutral else None
        if shared_drift is not None and not (
                shared_drift.serves(model, tokenizer, self.neutral, batch_size, base_prefix)
                and set(self.replay.layers if self.replay else ()) <= set(getattr(shared_drift.replay, "layers", ()))):
            shared_drift = None
        neutral_rows = [encode_prompt(tokenizer, p) for p in self.neutral] if store is not None else []
        key = store.key(model, self._stored_parts(neutral_rows, shared_drift is None)) if store is not None else None
        own_batches = (len(batch_order([len(e) for e in neutral_rows], batch_size, True))
                       if self.neutral and shared_drift is None else 0)
        stored = self._restored(store.load(key), own_batches) if key is not None else None
        self.base_target = stored["base_target"] if stored else self._target_logprobs(RECORD, base_prefix)
        if not self.neutral:
            self.drift_reference = None
        elif shared_drift is not None:
            self.drift_reference = shared_drift
        else:
            self.drift_reference = NeutralDrift(model, tokenizer, self.neutral, batch_size, self.replay,
                                                prefix=base_prefix, head_inputs=stored["heads"] if stored else None,
                                                keep_head_inputs=key is not None)
        if key is not None and stored is None:
            tensors = self._stored_tensors(shared_drift is None)
            if tensors is not None:
                store.save(key, tensors)

    def _stored_parts(self, neutral_rows: list[list[int]], own_drift: bool) -> dict:
        """What this scorer's base numbers depend on besides the model and the code (``scorer_store``)."""
        return {"targets": self._encoded_targets(), "neutral": neutral_rows,
                "paired": self.paired, "batch_size": self.batch_size, "pad": self.tokenizer.pad_token_id,
                "replay_layers": self.replay.layers if self.replay else [], "prefix": self.prefix_tokens,
                "branched": self.branched, "own_drift": own_drift}

    def _stored_tensors(self, own_drift: bool) -> dict[str, torch.Tensor] | None:
        """The base passes' results as named tensors; None when they cannot be kept whole."""
        tensors = {"base_target": self.base_target}
        if self.replay is not None:
            if not self.replay.usable:
                return None
            for (tag, number), kept in self.replay.stored.items():
                tensors.update({f"replay|{tag}|{number}|{layer}": hidden for layer, hidden in kept.items()})
        if own_drift and self.drift_reference is not None:
            if self.drift_reference.head_inputs is None:
                return None
            tensors.update({f"head|{n}": h for n, h in enumerate(self.drift_reference.head_inputs)})
        return tensors

    def _restored(self, tensors: dict[str, torch.Tensor] | None, expected_heads: int) -> dict | None:
        """Stored base passes put back: the replay records into ``self.replay``; returns the base target numbers
        and the neutral head inputs, or None (nothing stored)."""
        if tensors is None or "base_target" not in tensors:
            return None
        device = next(self.model.parameters()).device
        heads = sorted((int(name.split("|")[1]), t) for name, t in tensors.items() if name.startswith("head|"))
        if expected_heads != len(heads):
            return None
        for name, hidden in tensors.items():
            if name.startswith("replay|") and self.replay is not None:
                _, tag, number, layer = name.split("|")
                self.replay.stored.setdefault((tag, int(number)), {})[int(layer)] = hidden.to(device)
        return {"base_target": tensors["base_target"], "heads": [t.to(device) for _, t in heads]}

    def _shared_prefix(self) -> list[int]:
        """The tokens every scored prompt starts with (a chat template's header and default system prompt)."""
        encoded = [encode_prompt(self.tokenizer, p) for p in dict.fromkeys(self.prompts + self.neutral)]
        return shared_tokens(self.model, encoded, EFFECT_TOKENS)

    def _target_items(self) -> list[tuple[str, str]]:
        """Positives, then the negatives that exist."""
        return list(zip(self.prompts, self.positives)) + [(self.prompts[i], self.negatives[i]) for i in self.paired]

    def _encoded_targets(self) -> list[tuple[list[int], list[int]]]:
        return [(encode_prompt(self.tokenizer, p), encode_completion(self.tokenizer, c)[:EFFECT_TOKENS])
                for p, c in self._target_items()]

    def _prefix(self) -> PrefixPass | None:
        """The shared prefix run under the model's current steering, or None when nothing is shared."""
        if not self.prefix_tokens:
            return None
        return run_prefix(self.model, self.prefix_tokens, logprobs=bool(self.neutral))

    def _steered_prefix(self) -> PrefixPass | None:
        """:meth:`_prefix` under the steering the caller has just entered: it must keep the base pass's form."""
        prefix = self._prefix()
        if self.prefix_tokens and prefix is None:
            raise RuntimeError("the shared prefix's KV cache changed form under steering")
        return prefix

    def _target_logprobs(self, start: int | str | None = None, prefix: PrefixPass | None = None) -> torch.Tensor:
        """Opening log-probabilities: positives [N], then the negatives that exist [len(paired)]."""
        if not self.prompts:   # drift only
            return torch.zeros(0)
        return completion_logprobs(self.model, self.tokenizer, self._target_items(), batch_size=self.batch_size,
                                   replay=self.replay, tag="targets", start=start, by_length=True, prefix=prefix,
                                   branch=self.branched)

    def _effects(self, start: int | None = None, prefix: PrefixPass | None = None) -> torch.Tensor:
        change = self._target_logprobs(start, prefix) - self.base_target
        n = len(self.prompts)
        effect = change[:n].clone()
        effect[self.paired] -= change[n:]
        return effect

    def score_samples(self, steering: Callable[[], contextlib.AbstractContextManager] = nothing,
                      start: int | None = None, gates=None) -> tuple[torch.Tensor, float]:
        """(per-target-item effect [N], drift) while ``steering()`` is active on ``self.model``. ``start``: the
        first layer the steering changes (``prefix_replay.first_steered_layer``), None if unknown or none;
        ``gates``: the steered model when its only steering is gated neurons (``NeutralDrift`` skips untouched
        rows)."""
        with steering():
            prefix = self._steered_prefix()
            effect = self._effects(start, prefix)
            drift = (self.drift_reference.drift(start, prefix, gates) if self.drift_reference is not None
                     else float("nan"))
        return effect, drift

    def score_drift(self, steering: Callable[[], contextlib.AbstractContextManager] = nothing,
                    start: int | None = None, gates=None) -> float:
        """The drift alone (:meth:`score_samples` without the targets' pass): for a caller that reads no effect."""
        if self.drift_reference is None:
            raise ValueError("this scorer has no neutral prompts to measure drift on")
        with steering():
            return self.drift_reference.drift(start, self._steered_prefix(), gates)

    def score(self, steering: Callable[[], contextlib.AbstractContextManager] = nothing,
              start: int | None = None) -> tuple[float, float]:
        """(mean effect, drift) while ``steering()`` is active on ``self.model``."""
        effect, drift = self.score_samples(steering, start)
        return float(effect.mean()), drift
