"""The command line: parse, call one library function, print. Everything here is callable from Python.

``masteer-compile RECIPE`` is the main job; ``masteer`` groups the other verbs (``compile``,
``samples``, ``bake``, ``recipes``). Both run under one error handler (:class:`GuardedCommand`): a
:class:`MasteerError` (bad input a user can fix), an OSError, a click usage error or Ctrl-C prints one
line and exits non-zero, never a traceback; ``--debug`` (or ``MASTEER_DEBUG=1``) shows the traceback too.

Only click is imported at the top: the CLI starts in a blink, so a Ctrl-C while torch is still loading
lands in the handler too.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import traceback
from pathlib import Path

import click

from .common.names import EMBEDDED_NAME, SELECTION_EXACT, SELECTION_PRECISIONS

DEBUG_ENV = "MASTEER_DEBUG"
EXIT_BAD_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _debug_requested(args: list[str]) -> bool:
    """``--debug`` anywhere before a ``--``, or the environment variable set to anything but 0/empty."""
    options = args[: args.index("--")] if "--" in args else args
    return "--debug" in options or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _error_line(exc: BaseException) -> tuple[str, int]:
    """The line to print for ``exc`` and the exit status."""
    if isinstance(exc, click.UsageError):
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return f"Error: {_one_line(exc.format_message())}{where}", exc.exit_code
    if isinstance(exc, click.ClickException):
        return f"Error: {_one_line(exc.format_message())}", exc.exit_code
    if isinstance(exc, (click.Abort, KeyboardInterrupt)):
        return "Interrupted (Ctrl-C); no output folder is left half-written.", EXIT_INTERRUPTED
    errors = sys.modules.get("masteer.runtime.errors")   # loaded whenever one of its errors was raised
    if isinstance(exc, BrokenPipeError):   # the reader of our output went away (``| head``): nothing to say
        return "", EXIT_BAD_INPUT
    if isinstance(exc, OSError) or (errors is not None and isinstance(exc, errors.MasteerError)):
        return f"Error: {_one_line(exc)}", EXIT_BAD_INPUT
    return (f"Error: internal error, {type(exc).__name__}: {_one_line(exc)} (rerun with --debug or {DEBUG_ENV}=1 "
            f"for the traceback, and please report it)"), EXIT_BAD_INPUT


class GuardedCommand(click.Command):
    """A command with a ``--debug`` flag; run from the top (``main``), its errors go through the one handler."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                        help=f"Show the traceback of an error (also: {DEBUG_ENV}=1)."))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:   # a Python caller asked for the exceptions themselves
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        args = sys.argv[1:] if args is None else list(args)
        debug = _debug_requested(args)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place every error becomes one line
            if debug:
                traceback.print_exception(exc)
            line, status = _error_line(exc)
            if line:
                click.echo(line, err=True)
            sys.exit(status)
        sys.exit(result if isinstance(result, int) else 0)


class GuardedGroup(GuardedCommand, click.Group):
    """The ``masteer`` group: guarded, and its subcommands are guarded commands (each takes ``--debug``)."""

    command_class = GuardedCommand


def _user_errors(func):
    """Kept for commands written against it: errors are now turned into one line by :class:`GuardedCommand`."""
    return func


def _replaces_out(*inputs: str):
    """Decorator for a command that replaces its ``--out`` folder as a whole: adds ``--overwrite`` and checks,
    before any work, that the folder may be replaced and is none of the options named in ``inputs`` nor holds
    one (``masteer.runtime.output_folder``)."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, overwrite: bool = False, **kwargs):
            from masteer.runtime.output_folder import check_output_folder
            check_output_folder(kwargs["out"], inputs=[_local_path(kwargs.get(name)) for name in inputs],
                                overwrite=overwrite)
            return func(*args, **kwargs)
        return click.option("--overwrite", is_flag=True,
                            help="Replace --out if it exists (only a folder masteer wrote).")(wrapper)
    return decorate


def _local_path(value) -> str | None:
    """An option's value when it names something on disk (a model may also be a hub id or the embedded name)."""
    return str(value) if value is not None and Path(str(value)).exists() else None


def _finite(ctx, param, value: float | None) -> float | None:
    """click callback: a float option must be a finite number (click's float type takes 'nan' and 'inf')."""
    import math
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


def _parse_layers(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        layers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer indices such as 8,10,12; got {value!r}") from None
    if not layers:
        raise click.BadParameter("give at least one layer")
    negative = [layer for layer in layers if layer < 0]
    if negative:
        raise click.BadParameter(f"layer indices count from 0; got {', '.join(map(str, negative))}")
    return layers


def _quiet(ctx, param, value: bool) -> bool:
    """``--quiet`` also silences transformers' own bars (loading weights), not only masteer's."""
    if value:
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_progress_bar()
    return value


def _compile_options(func):
    options = [
        click.argument("recipe"),
        click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True,
                     help="A transformers model id or path, or the embedded default."),
        click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Adapter folder to write (an existing one only with --overwrite)."),
        click.option("--layers", callback=_parse_layers, help="Candidate layers, e.g. 8,10,12 (default: recipe's)."),
        click.option("--strength", type=float, help="Multiple of the fitted direction (default: recipe's)."),
        click.option("--seed", type=int, help="Seed for splits and fitting (default: recipe's)."),
        click.option("--mode", type=click.Choice(["adaptive", "single"]), default="adaptive", show_default=True,
                     help="adaptive: the library's strategies, anchored and chosen per input (a program); "
                          "single: one algorithm at one layer chosen on val."),
        click.option("--algorithm", default="mean_difference", show_default=True,
                     help="single mode: the steering algorithm."),
        click.option("--algorithms", help="adaptive mode: comma-separated candidate algorithms, or 'all' "
                                          "(default: those a gate can carry: all but directional_ablation, rotation)."),
        click.option("--keep-layers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="adaptive mode: best layers kept per algorithm as candidates."),
        click.option("--selection", type=click.Choice(["independent", "exclusive"]), default="independent",
                     show_default=True, help="adaptive mode: independent gates (bakeable) or at most one strategy "
                                             "per layer and token (adapter only)."),
        click.option("--budget", type=float, help="adaptive mode: drift budget, mean next-token KL (nats) on "
                                                  "neutral prompts (default 0.05)."),
        click.option("--catch", is_flag=True, help="adaptive mode: also try a strategy whose anchor opens where the "
                                                   "model begins the undesired answer (more recall, less restraint; "
                                                   "docs/generalisation.md)."),
        click.option("--add-to", "add_to", type=click.Path(file_okay=False, exists=True, path_type=Path),
                     help="adaptive mode: add this issue to an existing adapter, leaving its strategies as they are."),
        click.option("--samples", "samples_path", type=click.Path(dir_okay=False),
                     help="Use this sample set (JSONL from `masteer samples`) instead of building one."),
        click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation on the test split."),
        click.option("--no-suites", is_flag=True, help="Only the quick judged table: skip the evaluation suites "
                                                       "(MMLU, perplexity, KL with intervals)."),
        click.option("--full-report", is_flag=True, help="adaptive mode: also the diagnostics (the program decided "
                                                         "per prompt, its first strategy alone, fluency, teacher-forced "
                                                         "effect and KL, gate reports, breakdowns, the static frontier); "
                                                         "about twice the evaluation time."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), help="Tokens generated per evaluation prompt."),
        click.option("--quiet", "-q", is_flag=True, callback=_quiet, help="No progress bars."),
        click.option("--no-cache", is_flag=True, help="Compute again what a compile stores for later ones: the "
                                                      "activation capture, the base model's evaluation results and "
                                                      "the selection scorers' base passes."),
        click.option("--selection-precision", type=click.Choice(SELECTION_PRECISIONS), default=SELECTION_EXACT,
                     show_default=True, help="What calibration and the program search score and generate with: "
                                             "exact = the model as loaded; bf16 = a bfloat16 copy (about 2.4x "
                                             "faster where the CPU/GPU has bfloat16 units; may choose another "
                                             "program); bf16-search = calibration exact, the program search on "
                                             "the copy; auto = bf16 where there are such units. The evaluation "
                                             "always measures the model as loaded."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_compile(recipe, model, out, layers, strength, seed, mode, algorithm, algorithms, keep_layers, selection,
                 budget, catch, add_to, samples_path, no_eval, no_suites, full_report, max_new_tokens, quiet,
                 no_cache, selection_precision) -> None:
    """One compile path for both modes: the mode only chooses the preset that builds the program."""
    from .compile import AdaptiveOptions, run_compile
    from .pipeline import CompileOptions
    from .program.single_strategy import SINGLE_ALGORITHM, SingleStrategy
    from .strategies.library import DEFAULT_DRIFT_BUDGET
    options = CompileOptions(recipe=recipe, model=model, layers=layers, strength=strength, seed=seed,
                             samples_path=samples_path, evaluate=not no_eval, suites=not no_suites,
                             max_new_tokens=max_new_tokens, progress=not quiet, cache_activations=not no_cache,
                             store_base_results=not no_cache, full_report=full_report,
                             selection_precision=selection_precision)
    if mode == "adaptive":
        if algorithm != SINGLE_ALGORITHM:
            raise click.UsageError("--algorithm belongs to --mode single (adaptive mode takes --algorithms)")
        names = tuple(a.strip() for a in algorithms.split(",") if a.strip()) if algorithms else None
        preset = AdaptiveOptions(algorithms=names, keep_layers=keep_layers, selection=selection,
                                 budget=DEFAULT_DRIFT_BUDGET if budget is None else budget, catch=catch)
    else:
        if add_to is not None or algorithms or selection != "independent" or catch or budget is not None or full_report:
            raise click.UsageError("--add-to, --algorithms, --selection, --budget, --catch and --full-report belong to "
                                   "--mode adaptive")
        preset = SingleStrategy(algorithm=algorithm)
    # --out was checked before any work with the user's --overwrite (``_replaces_out``): what passed may be replaced
    path, summary = run_compile(options, preset, out, add_to=add_to, log=lambda line: click.echo(line, err=True),
                                overwrite=True)
    click.echo(f"\nwrote {path}\n\n{summary}")


@click.command(name="masteer-compile", cls=GuardedCommand)
@_compile_options
@_replaces_out("add_to", "samples_path", "model")
@_user_errors
def compile_command(**kwargs) -> None:
    """Compile RECIPE (a built-in recipe name, a TOML file, or an issue in words) into a steering adapter."""
    _run_compile(**kwargs)


@click.group(name="masteer", cls=GuardedGroup)
@click.version_option(package_name="masteer")
def main() -> None:
    """masteer: compile trustworthiness issues into steering adapters."""


main.add_command(compile_command, name="compile")


@main.command()
def recipes() -> None:
    """List the built-in recipes."""
    from .samples.recipes import builtin_recipes, load_recipe
    for name in sorted(builtin_recipes()):
        click.echo(f"{name:16s} {load_recipe(name).issue}")


@main.command()
@click.argument("recipe")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int)
@click.option("--backend", type=click.Choice(["auto", "local", "openai", "none"]), default="auto", show_default=True,
              help="Writer LLM: auto = the local model for an issue text, none for a recipe; openai reads "
                   "MASTEER_OPENAI_BASE_URL / OPENAI_BASE_URL and OPENAI_API_KEY.")
@click.option("--model", "-m", help="Writer model: a transformers id or path (local; default the embedded model), "
                                    "or the served model name (openai).")
@click.option("--no-llm", is_flag=True, help="Templates and retrieved seed items only.")
@click.option("--no-cache", is_flag=True, help="Ask the backend again instead of reading its disk cache.")
@click.option("--quiet", "-q", is_flag=True, callback=_quiet, help="No progress bars.")
def samples(recipe: str, out: Path, seed: int | None, backend: str, model: str | None, no_llm: bool, no_cache: bool,
            quiet: bool) -> None:
    """Build a sample set for RECIPE (a recipe name or TOML file, or an issue in words) and save it as JSONL."""
    from .samples.autotester.pipeline import format_summary
    from .samples.builders import build_sample_set
    sample_set = build_sample_set(recipe, backend=backend, model=model, seed=seed, use_llm=not no_llm,
                                  cache=not no_cache, progress=not quiet)
    sample_set.save(out)
    if "autotester" in sample_set.meta:
        click.echo(format_summary(sample_set))
    else:
        for key, count in sample_set.summary().items():
            click.echo(f"{key:40s} {count}")
    click.echo(f"wrote {out} ({len(sample_set.samples)} samples, hash {sample_set.content_hash})")


@main.command()
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True,
              help="Base model or baked checkpoint: a transformers id or path, or the embedded default.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="A compiled adapter folder to attach.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port (0: any free port).")
@click.option("--api-key-env", default=None, help="Require 'Authorization: Bearer <key>' with the key read from "
                                                  "this environment variable.")
def serve(model: str, adapter: str | None, host: str, port: int, api_key_env: str | None) -> None:
    """Serve MODEL (optionally with ADAPTER) as an OpenAI-compatible chat-completions endpoint."""
    from masteer.runtime.errors import MasteerError
    from .serve import serve as run_server
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        raise MasteerError(f"--api-key-env names {api_key_env}, which is not set")
    run_server(model, adapter=adapter, host=host, port=port, api_key=key, log=lambda line: click.echo(line, err=True))


@main.command()
@click.argument("recipe")
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="A transformers model id or path.")
@click.option("--layers", callback=_parse_layers, help="Candidate layers, e.g. 8,10,12 (default: recipe's).")
@click.option("--algorithms", help="Comma-separated algorithms (default: every registered one).")
@click.option("--budget", type=float, default=None, help="Drift budget: mean next-token KL (nats) on neutral prompts.")
@click.option("--keep-layers", type=int, default=2, show_default=True, help="Best layers kept per algorithm.")
@click.option("--samples", "samples_path", type=click.Path(dir_okay=False), help="Use this sample set.")
@click.option("--seed", type=int, help="Seed for splits (default: recipe's).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write every row as JSON.")
@click.option("--quiet", "-q", is_flag=True, callback=_quiet, help="No progress bars.")
@click.option("--no-cache", is_flag=True, help="Capture activations again even if a stored capture matches.")
def strategies(recipe, model, layers, algorithms, budget, keep_layers, samples_path, seed, json_out, quiet,
               no_cache) -> None:
    """Fit every algorithm at every candidate layer of RECIPE; print layer scores, strengths, effect and drift."""
    from masteer.runtime.atomic import atomic_write_text
    from .pipeline import CompileOptions, survey_strategies
    from .strategies.library import DEFAULT_DRIFT_BUDGET
    options = CompileOptions(recipe=recipe, model=model, layers=layers, seed=seed, samples_path=samples_path,
                             evaluate=False, progress=not quiet, cache_activations=not no_cache)
    names = [a.strip() for a in algorithms.split(",") if a.strip()] if algorithms else None
    survey = survey_strategies(options, algorithms=names, keep_layers=keep_layers,
                               budget=DEFAULT_DRIFT_BUDGET if budget is None else budget,
                               log=lambda line: click.echo(line, err=True))
    click.echo(survey.table())
    click.echo("\n" + survey.summary())
    if json_out:
        atomic_write_text(json_out, json.dumps(survey.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@main.command()
@click.argument("adapter", type=click.Path(path_type=Path))
@click.argument("text")
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="The adapter's base model.")
@click.option("--raw", is_flag=True, help="Tokenize TEXT as it is, not as a chat user turn.")
@click.option("--generate", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also answer TEXT with this many new tokens (greedy, adapter attached) and show them.")
@click.option("--threshold", type=float, default=0.5, show_default=True, callback=_finite,
              help="Openings at or above this are bold.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the numbers.")
def inspect(adapter: Path, text: str, model: str, raw: bool, generate: int, threshold: float, json_out) -> None:
    """Show, token by token, which strategies of ADAPTER fire on TEXT and how strongly (0 silent, 1 full)."""
    from masteer.runtime import SteeringAdapter
    from masteer.runtime.atomic import atomic_write_text
    from masteer.runtime.output_folder import check_output_file
    from .evaluation.inspection import inspect_text
    from .common.models import load_model
    if json_out:
        check_output_file(json_out, inputs=[adapter, _local_path(model)])
    steering = SteeringAdapter.load(adapter)
    loaded = load_model(model)
    result = inspect_text(loaded.model, loaded.tokenizer, steering, text, chat=not raw, generate=generate)
    click.echo(result.table(threshold))
    fired = ", ".join(f"{name}: {count}" for name, count in result.fired(threshold).items())
    click.echo(f"\ntokens open (>= {threshold:g}) per strategy: {fired or 'no gated strategies'}")
    if json_out:
        atomic_write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")


@main.command()
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="The adapter's base model.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply every strength by this (finite, at most 100 either way; recorded in the checkpoint).")
@click.option("--pad-to", type=click.IntRange(min=0), default=64, show_default=True,
              help="Round the widened MLP up to a multiple of this with zero neurons (same logits): an unaligned "
                   "width ran 1.87x slower on a GPU. 0 keeps the exact width (on a CPU the padding costs ~4% "
                   "on SmolLM2).")
@_replaces_out("adapter", "model")
def bake(adapter: Path, model: str, out: Path, scale: float, pad_to: int) -> None:
    """Merge ADAPTER into MODEL's weights: a checkpoint plain transformers loads without masteer."""
    from masteer.runtime import SteeringAdapter
    from masteer.runtime import bake as bake_checkpoint
    from masteer.runtime.bounds import check_scale
    from masteer.runtime.hosts import intermediate_size
    from .common.models import load_model
    check_scale(scale, "--scale")
    steering = SteeringAdapter.load(adapter)
    loaded = load_model(model)
    path = bake_checkpoint(loaded.model, steering, out, tokenizer=loaded.tokenizer, scale=scale, pad_to=pad_to)
    click.echo(f"wrote {path} (MLP {intermediate_size(loaded.model)} wide): load it with "
               f"AutoModelForCausalLM.from_pretrained({str(path)!r})")


@main.command()
@click.argument("adapter", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="The adapter's base model.")
@click.option("--families", help="Comma-separated rewrite families to withhold one at a time (default: all).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the table's numbers (per layer ceilings included).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--quiet", "-q", is_flag=True, callback=_quiet, help="No progress bars.")
def shift(adapter: Path, model: str, families: str | None, json_out, batch_size: int, quiet: bool) -> None:
    """Leave one rewrite family out: refit ADAPTER's program without it, test on it, beside its separability
    ceiling (compiler/lofo.py). Needs the adapter folder of an adaptive compile."""
    from masteer.runtime.atomic import atomic_write_text
    from .lofo import leave_one_family_out
    from .samples.rewrites import FAMILIES
    chosen = tuple(f.strip() for f in families.split(",") if f.strip()) if families else FAMILIES

    def save(report) -> None:   # after every family: a long run stopped early keeps what it measured
        if json_out:
            atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")

    report = leave_one_family_out(adapter, model=model, families=chosen, batch_size=batch_size, progress=not quiet,
                                  log=lambda line: click.echo(line, err=True), on_row=save)
    click.echo(report.markdown())
    if json_out:
        save(report)
        click.echo(f"wrote {json_out}")


@main.command()
@click.argument("issue")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for samples.jsonl (when built here), adapter/ and measure_report.json.")
@click.option("--samples", "samples_path", type=click.Path(dir_okay=False, exists=True),
              help="A saved sample set (default: build one with the local writer).")
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="A transformers model id or path.")
@click.option("--layers", callback=_parse_layers, default="8,10,12,14,16", show_default=True,
              help="Candidate layers, one single-strategy compile each.")
@click.option("--scales", default="1,2,4", show_default=True, help="Strengths tried on val at every layer.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--budget", type=float, default=None, help="Drift budget, mean next-token KL (nats) on val neutrals "
                                                        "(default 0.05).")
@click.option("--extra-pattern", help="A regex counted on the generations, e.g. an 'is an AI' judge.")
@click.option("--quiet", "-q", is_flag=True, callback=_quiet, help="No progress bars.")
@_user_errors
def measure(issue, out, samples_path, model, layers, scales, seed, budget, extra_pattern, quiet) -> None:
    """Measure a claim ISSUE's repair (e.g. "claims to be a human") on held-out prompts: preference, drift and
    judged answers for base, static and gated arms, layer and strength chosen on val (docs/autotester.md)."""
    import re
    from .measure_autotester import REPORT_NAME, run
    from .strategies.library import DEFAULT_DRIFT_BUDGET
    try:
        values = tuple(float(x) for x in scales.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{scales!r} is not a comma-separated list of numbers", param_hint="--scales")
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise click.BadParameter("strengths must be positive finite numbers", param_hint="--scales")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise click.BadParameter("the drift budget must be a positive number of nats", param_hint="--budget")
    if extra_pattern:
        try:
            re.compile(extra_pattern)
        except re.error as exc:
            raise click.BadParameter(f"not a regular expression: {exc}", param_hint="--extra-pattern")
    run(issue, out, samples_path, model, layers, values, seed, DEFAULT_DRIFT_BUDGET if budget is None else budget,
        extra_pattern, progress=not quiet, log=lambda line: click.echo(line, err=True))
    click.echo(f"wrote {out / REPORT_NAME} and {out / 'adapter'}")


@main.command(name="eval")
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="The base model (id, path or embedded).")
@click.option("--adapter", "adapters", multiple=True, type=click.Path(file_okay=False),
              help="An adapter folder to evaluate against the base (repeatable).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(file_okay=False),
              help="A baked checkpoint folder to evaluate against the base (repeatable).")
@click.option("--suite", "suites", multiple=True,
              help="A suite name, or 'all' (repeatable; default: refusal, over-refusal, over-refusal-benign, "
                   "mmlu, perplexity, kl).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="out/eval", show_default=True,
              help="Report folder; its cache.jsonl lets an interrupted run resume.")
@click.option("--samples", "samples_path", type=click.Path(dir_okay=False),
              help="The compile's sample set (default: samples.jsonl inside the adapter folder).")
@click.option("--target", "targets", multiple=True, help="A suite the repair should move (default: the recipe's).")
@click.option("--split", type=click.Choice(["auto", "packaged"]), default="auto", show_default=True,
              help="auto: refusal-type suites use the compile's test split when the sample set is known.")
@click.option("--n", "n", type=click.IntRange(min=1), help="At most this many items per suite.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=24, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--fresh", is_flag=True, help="Ignore finished work cached in --out.")
@click.option("--card", is_flag=True, help="Write the headline metrics into each adapter's model card.")
@click.option("--render", "render", type=click.Path(dir_okay=False),
              help="Only re-render a saved report (eval_report.json or compile_report.json) into --out.")
@click.option("--quiet", "-q", is_flag=True, callback=_quiet, help="No progress bars.")
def eval_command(model, adapters, checkpoints, suites, out, samples_path, targets, split, n, max_new_tokens,
                 batch_size, seed, fresh, card, render, quiet) -> None:
    """Evaluate MODEL (and adapters or baked checkpoints) on the evaluation suites; write a report."""
    from .evaluation import EvalOptions, render_report, run_eval
    if render:
        report, paths = render_report(render, out)
        click.echo(report.markdown())
        click.echo("\nwrote " + ", ".join(str(p) for p in paths.values()))
        return
    options = EvalOptions(model=model, adapters=adapters, checkpoints=checkpoints, suites=suites, out=out,
                          samples_path=samples_path, targets=targets or None, split=split, n=n,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, resume=not fresh,
                          card=card, progress=not quiet)
    report, paths = run_eval(options, log=lambda line: click.echo(line, err=True))
    click.echo(report.markdown())
    click.echo("\nwrote " + ", ".join(str(p) for p in paths.values()))


@main.group()
def export() -> None:
    """Lower an adapter for engines that run no masteer code: PEFT LoRA, llama.cpp GGUF."""


@export.command(name="lora")
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="The adapter's base model.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply every strength by this.")
@_user_errors
def export_lora(adapter: Path, model: str, out: Path, scale: float) -> None:
    """Write ADAPTER's always-on vectors and directional ablation as an exact PEFT LoRA (gated programs: bake)."""
    from masteer.runtime import SteeringAdapter
    from .common.models import load_model
    from .lowering.lora import check_lora_lowerable, save_lora
    steering = SteeringAdapter.load(adapter)
    check_lora_lowerable(steering)   # before the model loads
    loaded = load_model(model)
    path = save_lora(loaded.model, steering, out, scale=scale)
    click.echo(f"wrote {path}: load it with PeftModel.from_pretrained(base, {str(path)!r}) "
               f"or AutoModelForCausalLM.from_pretrained({str(path)!r})")


@export.command(name="gguf")
@click.argument("adapter", required=False, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path),
              help="Instead of ADAPTER: a baked checkpoint folder (`masteer bake`) to write as a GGUF model.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The GGUF file to write (e.g. refusal.controlvector.gguf or refusal-f16.gguf).")
@click.option("--type", "kind", type=click.Choice(["f32", "f16", "q8_0"]), default="f16", show_default=True,
              help="--checkpoint: the tensor type of the model's matrices.")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="ADAPTER: multiply every strength by this.")
@_user_errors
def export_gguf(adapter: Path | None, checkpoint: Path | None, out: Path, kind: str, scale: float) -> None:
    """Write ADAPTER's always-on vectors as a llama.cpp control vector, or a baked --checkpoint as a GGUF model."""
    if (adapter is None) == (checkpoint is None):
        raise click.UsageError("give either ADAPTER (a control vector) or --checkpoint DIR (a GGUF model)")
    if checkpoint is not None:
        from .lowering.gguf_model import write_gguf_model
        path = write_gguf_model(checkpoint, out, kind)
        click.echo(f"wrote {path}: run it with llama-cli -m {path}")
        return
    from masteer.runtime import SteeringAdapter
    from .lowering.control_vector import write_control_vector
    path = write_control_vector(SteeringAdapter.load(adapter), out, scale=scale)
    click.echo(f"wrote {path}: run it with llama-cli -m BASE.gguf --control-vector {path}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--revision", help="Push to this branch (created from main if missing); default main.")
@click.option("--report", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The compile report whose held-out results the card carries (default: the one in FOLDER).")
@_user_errors
def push(folder: Path, repo_id: str, private: bool, revision: str | None, report: Path | None) -> None:
    """Upload FOLDER (an adapter, a LoRA lowering, a baked checkpoint or GGUF files) to the Hub as REPO_ID, with a
    model card. Token and endpoint as huggingface_hub finds them (HF_TOKEN or `huggingface-cli login`; HF_ENDPOINT)."""
    from .lowering.hub import push as push_folder
    url = push_folder(folder, repo_id, private=private, revision=revision, report=report)
    click.echo(f"pushed {folder} to {repo_id}: {url}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
