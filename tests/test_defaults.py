"""Every option default is written once, and every command agrees with it.

``COUNTERPARTS`` names, for every option of every ``dealrec`` command (found by walking the click
group, ``finetune tiger``/``bigrec`` included), where its default is written: a config dataclass
field, a module constant, or a parameter of the library function the command calls; or
``CLI_ONLY`` for an option that exists only on the command line (``--quiet``). The tests fail when

- a command has an option that the table does not list (a new option needs a counterpart or a
  ``CLI_ONLY`` entry), or the table lists one that the command no longer has;
- the default click gives an option (after its type and callback) differs from its counterpart;
- a help text states a default (``[default: X]``, ``(default: X)``, ``[X]``, ``[X, ...]``, or a
  choice followed by ``(default)``) that is not the value that applies;
- a library function the command calls has a parameter of the option's name whose default differs.

Options whose click default is ``None`` because the real default is decided further down (the
model options of ``train-surrogate``, ``prune --lambda``...) say which value applies with ``says=``.
"""
from __future__ import annotations

import dataclasses
import inspect
import re

import click
import pytest

import dealrec.compare as compare
import dealrec.export as export
import dealrec.prepare as prepare
import dealrec.prune as prune
import dealrec.runconfig as runconfig
import dealrec.score as score
import dealrec.select as select
import finetune.bigrec as bigrec
import finetune.prompts as prompts
import finetune.tiger_train as tiger_train
import surrogates.cli as surrogate_cli
import surrogates.config as surrogate_config
import surrogates.train as surrogate_train
from dealrec.cli import main
from dealrec.hvp import HvpConfig
from dealrec.methods import REGISTRY
from dealrec.score import ScoreConfig
from dealrec.select import SelectionConfig
from finetune.bigrec import BigrecConfig
from finetune.rqvae import RQVAEConfig
from finetune.tiger import TigerConfig
from finetune.tiger_train import TigerTrainConfig
from surrogates.config import TrainConfig as SurrogateTrainConfig
from surrogates.registry import SURROGATES


@dataclasses.dataclass(frozen=True)
class Default:
    """The default written in ``owner.name``: a dataclass field, a module constant or a function parameter.
    ``form`` turns it into the option's shape (e.g. a tuple into the comma-separated text of ``--methods``);
    ``says`` is the value that applies when the option's own default is None (what its help must state)."""

    owner: object
    name: str
    form: object = None
    says: "Default | None" = None

    def value(self):
        if dataclasses.is_dataclass(self.owner) and isinstance(self.owner, type):
            fields = {f.name: f for f in dataclasses.fields(self.owner)}
            if self.name in fields:
                f = fields[self.name]
                value = f.default_factory() if f.default is dataclasses.MISSING else f.default
            else:
                value = getattr(self.owner, self.name)
        elif inspect.isroutine(self.owner):   # not callable(): dealrec.select, a module, is callable too
            value = inspect.signature(self.owner).parameters[self.name].default
            assert value is not inspect.Parameter.empty, f"{self}: the parameter has no default"
        else:
            value = getattr(self.owner, self.name)
        return self.form(value) if self.form else value

    def __str__(self):
        return f"{getattr(self.owner, '__name__', self.owner)}.{self.name}"


CLI_ONLY = "cli-only"
UNSET = type("Unset", (), {"value": None, "__name__": "no click default"})


def left_to(says: Default) -> Default:
    """An option with no default of its own (None): the value that applies is ``says``."""
    return Default(UNSET, "value", says=says)


def _hvp(name):
    return Default(HvpConfig, name)


def _score(name):
    return Default(ScoreConfig, name)


# `dealrec score`'s options, shared by `dealrec prune` (one decorator, _score_options)
SCORE_OPTIONS = {
    "hvp": _hvp("solver"), "damping": _hvp("damping"), "lissa_scale": _hvp("scale"),
    "lissa_steps": _hvp("lissa_steps"), "hessian_samples": _hvp("hessian_samples"), "hvp_batch": _hvp("hvp_batch"),
    "hessian_rank": _hvp("rank"), "influence_v": _score("influence_v"),
    "influence_checkpoints": _score("influence_checkpoints"),
    "checkpoint_mean": _score("checkpoint_mean"),
    "v_weighting": _score("v_weighting"), "target": _score("target"), "llm": _score("llm"),
    "adapter": _score("adapter"), "target_init": _score("target_init"), "effort_block": _score("effort_block"),
    "batch_size": _score("batch_size"), "effort_batch_size": _score("effort_batch_size"),
    "chunk_tokens": _score("chunk_tokens"), "workers": _score("workers"), "shard_size": _score("shard_size"),
    "ray_address": _score("ray_address"), "threads_per_worker": _score("threads"), "worker_nice": _score("worker_nice"),
    "seed": _score("seed"), "template": _score("template"), "device": _score("device"), "dtype": _score("dtype"),
    "load_in_8bit": _score("load_in_8bit"), "load_in_4bit": _score("load_in_4bit"),
    "quiet": CLI_ONLY, "config": CLI_ONLY,
}

SURROGATE_THREADS = Default(SurrogateTrainConfig, "threads", says=Default(surrogate_config, "DEFAULT_THREADS"))


def _run_compare(name, **kw):
    return Default(compare.run_compare, name, **kw)


def _bigrec(name):
    return Default(BigrecConfig, name)


def _tiger(name):
    return Default(TigerTrainConfig, name)


# a model option of train-surrogate: no click default and no one default in its help (each model has its
# own); the help's section of each model states that model's (test_each_models_section_states_its_defaults)
PER_MODEL = Default(UNSET, "value")


COUNTERPARTS = {
    "prepare": {
        "out": CLI_ONLY, "src": CLI_ONLY, "overwrite": Default(prepare.prepare, "overwrite"),
        "items_file": Default(prepare.PrepareOptions, "items_file"),
        "min_rating": Default(prepare.PrepareOptions, "min_rating"),
        "min_user_count": Default(prepare.PrepareOptions, "min_user_count"),
        "min_item_count": Default(prepare.PrepareOptions, "min_item_count"),
        "split": Default(prepare.PrepareOptions, "split"),
        "shard_size": Default(prepare.PrepareOptions, "shard_size"),
    },
    "train-surrogate": {
        "data": CLI_ONLY, "out_dir": CLI_ONLY, "overwrite": Default(surrogate_train.train_surrogate, "overwrite"),
        "model_name": Default(surrogate_config, "DEFAULT_MODEL"),
        # model options: no click default (unset = the model's own); the help states each model's
        **{name: PER_MODEL for name in surrogate_cli.model_option_fields()},
        "lr": Default(SurrogateTrainConfig, "lr"), "weight_decay": Default(SurrogateTrainConfig, "weight_decay"),
        "batch_size": Default(SurrogateTrainConfig, "batch_size"),
        "max_epochs": Default(SurrogateTrainConfig, "max_epochs"),
        "patience": Default(SurrogateTrainConfig, "patience"),
        "max_minutes": Default(SurrogateTrainConfig, "max_minutes"),
        "weighting": Default(SurrogateTrainConfig, "weighting"), "batching": Default(SurrogateTrainConfig, "batching"),
        "ce_chunk": Default(SurrogateTrainConfig, "ce_chunk"), "seed": Default(SurrogateTrainConfig, "seed"),
        "checkpoints": Default(SurrogateTrainConfig, "checkpoints"),
        "threads": SURROGATE_THREADS, "device": Default(SurrogateTrainConfig, "device"), "quiet": CLI_ONLY,
    },
    "score": {"data": CLI_ONLY, "surrogate": CLI_ONLY, "out": CLI_ONLY, **SCORE_OPTIONS},
    "select": {
        "run": CLI_ONLY, "method": Default(SelectionConfig, "method"), "n": Default(SelectionConfig, "n"),
        "lam": Default(SelectionConfig, "lam"), "k": Default(SelectionConfig, "k"),
        "hard_prune": Default(SelectionConfig, "hard_prune"), "seed": Default(SelectionConfig, "seed"),
        "allocation": Default(SelectionConfig, "allocation"),
        "data": Default(select.run_select, "data"), "surrogate": Default(select.run_select, "surrogate"),
        "out": Default(select.run_select, "out"), "no_plot": CLI_ONLY, "config": CLI_ONLY,
    },
    "export": {
        "run": CLI_ONLY, "fmt": Default(export, "DEFAULT_FORMAT"), "data": Default(export.run_export, "data"),
        # None: the one the run's manifest records, else the default domain (what the help states)
        "template": Default(export.run_export, "template", says=Default(prompts, "DEFAULT_DOMAIN")),
    },
    "prune": {
        "data": CLI_ONLY, "out": CLI_ONLY, **SCORE_OPTIONS,
        "n": Default(select, "DEFAULT_N"), "surrogate": Default(prune.run_prune, "surrogate"),
        "surrogate_model": Default(prune.run_prune, "surrogate_model", says=Default(surrogate_config, "DEFAULT_MODEL")),
        "surrogate_minutes": Default(SurrogateTrainConfig, "max_minutes"),
        "surrogate_epochs": Default(SurrogateTrainConfig, "max_epochs"), "threads": SURROGATE_THREADS,
        # None: run_prune uses select's default
        "lam": Default(prune.run_prune, "lam", says=Default(select, "DEFAULT_LAMBDA")),
        "k": Default(prune.run_prune, "k", says=Default(select, "DEFAULT_K")),
        # None: the method's default share; prune's methods (dealrec, influence) drop nothing
        "hard_prune": Default(prune.run_prune, "hard_prune", says=Default(REGISTRY["dealrec"], "hard_prune")),
        # None: the method's default (prune's methods, dealrec and influence, share it)
        "allocation": Default(prune.run_prune, "allocation", says=Default(REGISTRY["dealrec"], "allocation")),
        # None: prune_target decides (none at lambda 0, else TIGER)
        "target": Default(prune.prune_target, "target"),
    },
    "compare": {
        "data": CLI_ONLY, "out": CLI_ONLY, "quiet": CLI_ONLY, "n": Default(select, "DEFAULT_N"),
        "methods": Default(compare, "DEFAULT_METHODS", form=",".join),
        "seeds": Default(compare, "DEFAULT_SEEDS", form=lambda seeds: ",".join(map(str, seeds))),
        "full": _run_compare("full"), "target": Default(compare, "DEFAULT_TARGET"), "llm": _run_compare("llm"),
        "workers": _run_compare("workers"), "ray_address": _run_compare("ray_address"),
        "surrogate": _run_compare("surrogate"), "surrogate_epochs": Default(SurrogateTrainConfig, "max_epochs"),
        "surrogate_model": _run_compare("surrogate_model", says=Default(surrogate_config, "DEFAULT_MODEL")),
        "surrogate_minutes": Default(SurrogateTrainConfig, "max_minutes"), "threads": SURROGATE_THREADS,
        "lam": Default(select, "DEFAULT_LAMBDA"), "k": Default(select, "DEFAULT_K"),
        "hard_prune": _run_compare("hard_prune"), "allocation": _run_compare("allocation"),
        "score_args": _run_compare("score_args"),
        "finetune_args": _run_compare("finetune_args"), "config": CLI_ONLY,
    },
    "config-from-run": {"run": CLI_ONLY, "command": Default(runconfig.config_from_run, "command")},
    "finetune tiger": {
        "data_dir": CLI_ONLY, "train_path": CLI_ONLY, "out": CLI_ONLY,
        "init_ckpt": Default(tiger_train.run_tiger, "init_ckpt"),
        "encoder_dir": Default(tiger_train.run_tiger, "encoder_dir"),
        **{name: _tiger(name) for name in ("seed", "max_epochs", "batch_size", "lr", "warmup_steps", "patience",
                                           "eval_every_steps", "valid_users", "metric", "beam_size", "max_minutes",
                                           "expand_prefixes")},
        "d_model": Default(TigerConfig, "d_model"), "layers": Default(TigerConfig, "num_layers"),
        "dropout": Default(TigerConfig, "dropout"), "max_history": Default(TigerConfig, "max_history_items"),
        "rqvae_epochs": Default(RQVAEConfig, "epochs"), "threads": Default(tiger_train, "DEFAULT_THREADS"),
        "overwrite": Default(tiger_train.run_tiger, "overwrite"), "quiet": Default(tiger_train.run_tiger, "quiet"),
        "device": _tiger("device"),
    },
    "finetune bigrec": {
        "llm": CLI_ONLY, "data": CLI_ONLY, "train_path": CLI_ONLY, "out": CLI_ONLY,
        "overwrite": Default(bigrec.run_bigrec, "overwrite"),
        **{name: _bigrec(name) for name in ("adapter", "r", "alpha", "dropout", "target_modules", "lr", "batch_size",
                                            "micro_batch_size", "epochs", "patience", "loss_on", "max_tokens",
                                            "max_steps", "max_users", "valid_loss_samples", "num_beams",
                                            "max_new_tokens", "eval_batch_size", "domain", "device", "dtype",
                                            "threads", "seed", "load_in_8bit", "load_in_4bit", "mixed_precision",
                                            "gradient_checkpointing")},
    },
}

# The library function each command calls with its options: a parameter of an option's name must
# default to what the option defaults to (a direct caller gets what the command gives).
RUNNERS = {
    "prepare": [prepare.prepare], "train-surrogate": [surrogate_train.train_surrogate],
    "score": [score.config_from_options], "select": [select.run_select], "export": [export.run_export],
    "prune": [prune.run_prune, score.config_from_options], "compare": [compare.run_compare],
    "finetune tiger": [tiger_train.run_tiger], "finetune bigrec": [bigrec.bigrec_config, bigrec.run_bigrec],
    "config-from-run": [runconfig.config_from_run],
}


def walk(group: click.Group, prefix: str = ""):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from walk(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


COMMANDS = dict(walk(main))


def click_defaults(command: click.Command) -> dict:
    """Every parameter's value when the command line gives only what is required (placeholders)."""
    argv = []
    for param in command.params:
        if param.required:
            argv += ["."] if isinstance(param, click.Argument) else [param.opts[0], "."]
    return dict(command.make_context(command.name, argv).params)


def test_the_walk_finds_every_command():
    assert set(COMMANDS) == {"prepare", "train-surrogate", "score", "select", "export", "prune", "compare",
                             "finetune tiger", "finetune bigrec", "config-from-run"}
    assert set(COUNTERPARTS) == set(COMMANDS) == set(RUNNERS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_has_a_counterpart(path):
    options = {p.name for p in COMMANDS[path].params}
    listed = set(COUNTERPARTS[path])
    assert not options - listed, f"dealrec {path}: add these to COUNTERPARTS (a counterpart or CLI_ONLY): " \
                                 f"{sorted(options - listed)}"
    assert not listed - options, f"dealrec {path}: COUNTERPARTS lists options it does not have: " \
                                 f"{sorted(listed - options)}"


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_click_defaults_are_the_counterparts(path):
    given = click_defaults(COMMANDS[path])
    wrong = []
    for param in COMMANDS[path].params:
        where = COUNTERPARTS[path][param.name]
        if where == CLI_ONLY or param.required:
            continue
        if not _same(given[param.name], where.value()):
            wrong.append(f"--{param.name}: click {given[param.name]!r}, {where} {where.value()!r}")
    assert not wrong, f"dealrec {path}: " + "; ".join(wrong)


_STATED = [re.compile(r"\[default: ([^\]]*)\]"), re.compile(r"\(default: ([^)]*)\)"),
           re.compile(r"\[(?!default: )([^\[\]]*)\]")]


def stated_defaults(help_text: str, choices=()) -> list[str]:
    """What a help text states as the default, one string a statement: the text up to its first ', ' or ':'."""
    found = []
    for pattern in _STATED:
        for m in pattern.finditer(help_text):
            found.append(re.split(r", |: ?", m.group(1), maxsplit=1)[0].strip())
    for m in re.finditer(r"\(default\)", help_text):
        before = help_text[:m.start()]
        named = [(before.rfind(c), c) for c in choices if re.search(rf"\b{re.escape(c)}\b", before)]
        found.append(max(named)[1] if named else "(default) with no choice before it")
    return found


def _literal(text: str):
    """A number, a boolean or a word the help means as a value; None for a description."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        pass
    if text in ("true", "false", "True", "False"):
        return text.lower() == "true"
    return text if re.fullmatch(r"[\w@.\-]+", text) else None


def _states(text: str, value, choices) -> bool:
    literal = _literal(text)
    if value is None:   # a description of what happens ("none", "the one RUN/manifest.json names"), not a value
        return not isinstance(literal, (float, bool)) and text not in choices
    if isinstance(value, bool) or isinstance(literal, bool):
        return literal is value
    if isinstance(value, (int, float)):
        return isinstance(literal, float) and literal == float(value)
    return text == str(value)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_texts_state_the_real_default(path):
    given = click_defaults(COMMANDS[path])
    wrong = []
    for param in COMMANDS[path].params:
        text = getattr(param, "help", None) or ""
        where = COUNTERPARTS[path][param.name]
        says = where.says if where != CLI_ONLY and where.says else None
        value = says.value() if says else given.get(param.name)
        choices = tuple(param.type.choices) if isinstance(param.type, click.Choice) else ()
        for stated in stated_defaults(text, choices):
            if not _states(stated, value, choices):
                wrong.append(f"--{param.name}: help says {stated!r}, the default is {value!r}")
        if says is not None:
            assert stated_defaults(text, choices), f"dealrec {path} --{param.name}: its help must state {says}"
    assert not wrong, f"dealrec {path}: " + "; ".join(wrong)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_library_functions_default_like_their_command(path):
    given = click_defaults(COMMANDS[path])
    wrong = []
    for function in RUNNERS[path]:
        for name, p in inspect.signature(function).parameters.items():
            if name not in given or p.default is inspect.Parameter.empty:
                continue
            where = COUNTERPARTS[path][name]
            default = where.form(p.default) if where != CLI_ONLY and where.form else p.default   # --methods a,b
            if not _same(default, given[name]):
                wrong.append(f"{function.__name__}({name}={p.default!r}) but the option gives {given[name]!r}")
    assert not wrong, f"dealrec {path}: " + "; ".join(wrong)


def test_the_checks_catch_a_stale_help_text():
    """The help check itself: the forms it reads, and the disagreements it must report."""
    assert stated_defaults("Hidden size [64].") == ["64"]
    assert stated_defaults("Torch threads [2, on any machine: ...].") == ["2"]
    assert stated_defaults("Budget [default: none: early stopping alone].") == ["none"]
    assert stated_defaults("Folder (default: the one RUN/manifest.json names).") == ["the one RUN/manifest.json names"]
    positions = ("from_start", "from_end")
    assert stated_defaults("Counted from_start (default) or from_end.", positions) == ["from_start"]
    assert not _states("from_start", "from_end", positions)       # the old --positions help
    assert not _states("0.5", 0.3, ())
    assert not _states("64", None, ())                            # a value stated where none applies
    assert _states("1,024", 1024, ()) and _states("ce", "ce", ("ce", "bce")) and _states("none", None, ())


def test_each_models_section_states_its_defaults():
    """train-surrogate --help: a section per registered model, listing exactly that model's options, each
    with the default its config class gives."""
    command = COMMANDS["train-surrogate"]
    ctx = click.Context(command, info_name="train-surrogate")
    text = command.get_help(ctx)
    sections = re.split(r"\n(?=\S)", text)
    for name, cls in SURROGATES.items():
        [section] = [s for s in sections if s.startswith(f"{cls.__name__} options (--model {name};")]
        rows = re.split(r" (?=--[a-z])", " ".join(section.split("\n", 1)[1].split()))
        stated = {row.split()[0][2:]: re.findall(r"\[([^\]]*)\]", row)[-1] for row in rows}
        fields = {f.name.replace("_", "-"): f.default for f in cls.config_class.option_fields()}
        assert set(stated) == set(fields), f"{name}: {sorted(stated)} != {sorted(fields)}"
        for option, default in fields.items():
            assert stated[option] == str(default), f"{name} --{option}: help says {stated[option]}, default {default}"
