"""The command line: parse, call one library function, print. Everything here is callable from Python.

``masteer-compile RECIPE`` is the main job; ``masteer`` groups the other verbs (``compile``,
``samples``, ``bake``, ``recipes``). A :class:`MasteerError` (bad input a user can fix) is printed as
one clear line with exit status 1, never as a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from masteer.runtime.errors import MasteerError

from .models import EMBEDDED_NAME


def _user_errors(func):
    """Turn the library's user-facing errors into click's one-line error output."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (MasteerError, OSError) as exc:  # OSError: a path the user gave cannot be read or written
            raise click.ClickException(str(exc)) from None
    return wrapper


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


def _compile_options(func):
    options = [
        click.argument("recipe"),
        click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True,
                     help="A transformers model id or path, or the embedded default."),
        click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Adapter folder to write (replaced atomically if it exists)."),
        click.option("--layers", callback=_parse_layers, help="Candidate layers, e.g. 8,10,12 (default: recipe's)."),
        click.option("--strength", type=float, help="Multiple of the fitted direction (default: recipe's)."),
        click.option("--seed", type=int, help="Seed for splits and fitting (default: recipe's)."),
        click.option("--algorithm", default="mean_difference", show_default=True, help="Steering algorithm."),
        click.option("--samples", "samples_path", type=click.Path(dir_okay=False),
                     help="Use this sample set (JSONL from `masteer samples`) instead of building one."),
        click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation on the test split."),
        click.option("--max-new-tokens", type=int, help="Tokens generated per evaluation prompt."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
        click.option("--no-cache", is_flag=True, help="Capture activations again even if a stored capture matches."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_compile(recipe, model, out, layers, strength, seed, algorithm, samples_path, no_eval, max_new_tokens,
                 quiet, no_cache) -> None:
    from .pipeline import CompileOptions, compile_recipe, save_result
    options = CompileOptions(recipe=recipe, model=model, layers=layers, strength=strength, seed=seed,
                             algorithm=algorithm, samples_path=samples_path, evaluate=not no_eval,
                             max_new_tokens=max_new_tokens, progress=not quiet, cache_activations=not no_cache)
    result = compile_recipe(options, log=lambda line: click.echo(line, err=True))
    path = save_result(result, out)
    click.echo(f"\nwrote {path} (layer {result.chosen_layer}, strength {result.strength:g})")
    if result.evaluation is not None:
        click.echo("\n" + result.table())


@click.command(name="masteer-compile")
@_compile_options
@_user_errors
def compile_command(**kwargs) -> None:
    """Compile RECIPE (a built-in recipe name or a TOML file) into a steering adapter and measure it."""
    _run_compile(**kwargs)


@click.group()
@click.version_option(package_name="masteer")
def main() -> None:
    """masteer: compile trustworthiness issues into steering adapters."""


main.add_command(compile_command, name="compile")


@main.command()
@_user_errors
def recipes() -> None:
    """List the built-in recipes."""
    from .recipes import builtin_recipes, load_recipe
    for name in sorted(builtin_recipes()):
        click.echo(f"{name:16s} {load_recipe(name).issue}")


@main.command()
@click.argument("recipe")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int)
@_user_errors
def samples(recipe: str, out: Path, seed: int | None) -> None:
    """Build RECIPE's sample set (with fixed splits) and save it as JSONL to edit or inspect."""
    from .builders import build_samples
    from .recipes import load_recipe
    sample_set = build_samples(load_recipe(recipe), seed)
    sample_set.save(out)
    for key, count in sample_set.summary().items():
        click.echo(f"{key:40s} {count}")
    click.echo(f"wrote {out} ({len(sample_set.samples)} samples, hash {sample_set.content_hash})")


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
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--no-cache", is_flag=True, help="Capture activations again even if a stored capture matches.")
@_user_errors
def strategies(recipe, model, layers, algorithms, budget, keep_layers, samples_path, seed, json_out, quiet,
               no_cache) -> None:
    """Fit every algorithm at every candidate layer of RECIPE; print layer scores, strengths, effect and drift."""
    from masteer.runtime.atomic import atomic_write_text
    from .pipeline import CompileOptions, survey_strategies
    from .strategies import DEFAULT_DRIFT_BUDGET
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
@click.option("--model", "-m", default=EMBEDDED_NAME, show_default=True, help="The adapter's base model.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply every strength by this.")
@_user_errors
def bake(adapter: Path, model: str, out: Path, scale: float) -> None:
    """Merge ADAPTER into MODEL's weights: a checkpoint plain transformers loads without masteer."""
    from masteer.runtime import SteeringAdapter
    from masteer.runtime import bake as bake_checkpoint
    from .models import load_model
    steering = SteeringAdapter.load(adapter)
    loaded = load_model(model)
    path = bake_checkpoint(loaded.model, steering, out, tokenizer=loaded.tokenizer, scale=scale)
    click.echo(f"wrote {path}: load it with AutoModelForCausalLM.from_pretrained({str(path)!r})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
