"""The LightningCLI of ``lightning-sparsity fit`` and of every sweep run, with one-line errors.

:func:`sparsity_cli` builds a ``LightningCLI`` over any ``LightningModule`` and
``LightningDataModule`` given by ``class_path`` in a YAML config (see ``configs/``). Its
parse and instantiation errors (a bad value, an unknown key, a missing file, an unreadable
checkpoint, and a budget the model cannot have, found as the fit starts) become
:class:`CliError`, one line that names the key path, e.g.
``trainer.callbacks > lightning_sparsity.SparsityCallback > pruning > ... > allocation:
Expected a typing.Literal[...]. Got value: globl``. Errors raised while training keep
their traceback; so do config errors when ``JSONARGPARSE_DEBUG=true``.

The ``lightning-sparsity`` command (:mod:`lightning_sparsity.cli`) and the sweeps
(:mod:`lightning_sparsity.sweeps`) both build their fits here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_sparsity._text import one_line
from lightning_sparsity.loggers.resume import same_root, saved_versions

__all__ = ["CliError", "read_checkpoint", "sparsity_cli"]


class CliError(Exception):
    """A user error: printed as one line by the command, exit status 2."""


def _debug() -> bool:
    """Whether to keep tracebacks of config errors: ``JSONARGPARSE_DEBUG=true``."""
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true"


def read_checkpoint(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: nothing in the file is executed.

    Raises:
        CliError: Saying why the file cannot be read: empty, truncated, damaged, not written
            by ``torch.save``, or holding objects the weights-only unpickler refuses.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        name = f"checkpoint {path!r}"
        text = str(err)
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            raise CliError(f"{name} is empty") from err
        if zipfile.is_zipfile(path):
            refused = re.search(r"WeightsUnpickler error: ([^\n]*?\.)(?:\s|$)", text)
            if refused:
                raise CliError(
                    f"{name} holds objects that torch.load(weights_only=True) refuses:"
                    f" {refused.group(1)} Load it in Python only if you trust its source"
                ) from err
            raise CliError(f"{name} is damaged: {type(err).__name__}: {one_line(text)}") from err
        if head == b"PK\x03\x04":  # a zip archive without its end: cut short
            raise CliError(
                f"{name} is truncated (a zip archive without its end: not fully written?)"
            ) from err
        raise CliError(
            f"{name} is not a readable checkpoint (not an archive written by torch.save)"
        ) from err


_UNION = "Does not validate against any of the Union subtypes"
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':\s*(.*)")


@dataclass
class _Node:
    text: str
    children: list[_Node] = field(default_factory=list)


def _tree(message: str) -> list[_Node]:
    """The lines of a jsonargparse error as a tree, by indentation (``- `` bullets nest)."""
    root = _Node("")
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in message.splitlines():
        text = line.lstrip(" ")
        if not text:
            continue
        indent = len(line) - len(text)
        if text.startswith("- "):
            text, indent = text[2:], indent + 2
        while stack[-1][0] >= indent:
            stack.pop()
        node = _Node(text)
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    return root.children


def _type_names(text: str) -> str:
    """``[<class 'int'>, <class 'NoneType'>]`` as ``int or None``."""
    names = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text.strip("[]"))
    return " or ".join(n.strip() for n in names.replace("NoneType", "None").split(", "))


def _condense(nodes: list[_Node]) -> tuple[list[str], str]:
    """The key path and the innermost message of a jsonargparse error tree."""
    for node in nodes:
        match = _PARSER_KEY.match(node.text) or _CLASS_PATH.match(node.text)
        if match:
            path, message = ([], match.group(2)) if match.group(2) else _condense(node.children)
            return [match.group(1), *path], message
    if any(node.text == _UNION for node in nodes):
        by_head = {node.text.split(":", 1)[0]: node for node in nodes}
        errors = by_head["Errors"].children if "Errors" in by_head else []
        specific = [e for e in errors if _PARSER_KEY.match(e.text) or _CLASS_PATH.match(e.text)]
        if specific:
            return _condense(specific[:1])
        subtypes = by_head["Subtypes"].text.split(":", 1)[1] if "Subtypes" in by_head else ""
        given = by_head["Given value"].text.split(":", 1)[1] if "Given value" in by_head else ""
        return [], f"expected {_type_names(subtypes.strip())}, got {given.strip()!r}"
    lines: list[str] = []

    def flatten(ns: list[_Node]) -> None:
        for n in ns:
            if not n.text.startswith("Given value type:"):
                lines.append(n.text)
            flatten(n.children)

    flatten(nodes)
    return [], "; ".join(lines)


def _config_error(message: str) -> str:
    """One line for a (possibly deeply nested) jsonargparse error message.

    Keeps the innermost message and the path of keys and class paths leading to it, e.g.
    ``trainer.callbacks > lightning_sparsity.SparsityCallback > pruning > ... > allocation:
    Expected a typing.Literal[...]. Got value: globl``.
    """
    try:
        path, inner = _condense(_tree(message))
    except Exception:  # an unexpected layout: fall back to the whole message
        path, inner = [], ""
    text = " > ".join(path) + ": " + inner if path else inner or message
    return one_line(re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text))


#: the loggers Lightning makes by default (``logger`` unset), both in ``save_dir/lightning_logs``
_DEFAULT_LOGGERS = ("TensorBoardLogger", "CSVLogger")


def _continue_logged_run(config: Any) -> None:
    """``fit --ckpt_path``: a logger that would start a new version logs into the checkpoint's.

    Lightning's ``TensorBoardLogger`` and ``CSVLogger`` pick the next free ``version_N`` for
    every fit, so a resumed fit showed in TensorBoard as a second run. A logger given its own
    ``version``, or logging elsewhere (another ``save_dir`` or ``name``), stays as configured.
    """
    if config.get("subcommand") != "fit":
        return
    fit = config["fit"]
    path = fit.get("ckpt_path")
    if not path or not Path(path).is_file():
        return  # none, or "last" / "hpc" / "registry", which Lightning resolves
    saved = saved_versions(path)
    configured = fit.get("trainer.logger")
    if configured is None or configured is True:  # Lightning's default logger, spelled out
        if not saved or saved[0]["type"] not in _DEFAULT_LOGGERS:
            return
        from jsonargparse import Namespace

        from lightning_sparsity._lightning import submodule

        root = fit.get("trainer.default_root_dir") or os.getcwd()
        configured = fit["trainer.logger"] = Namespace(
            class_path=f"{submodule('loggers').__name__}.{saved[0]['type']}",
            init_args=Namespace(save_dir=str(root)),
        )
    loggers = configured if isinstance(configured, list) else [configured]
    for logger, was in zip(loggers, saved, strict=False):
        init = getattr(logger, "init_args", None)
        if (
            init is None
            or str(logger.class_path).rsplit(".", 1)[-1] != was["type"]
            or init.get("version") is not None
            or was.get("version") is None
        ):
            continue
        name = init.get("name", "lightning_logs")
        if same_root(Path(str(init.get("save_dir") or ""), "" if name is None else str(name)), was):
            init.version = was["version"]


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _cli_class(edit: Callable[[Any], None] | None) -> type:
    """LightningCLI whose parse and instantiation errors become :class:`CliError`.

    ``edit`` changes the parsed config before the objects are built.
    """
    from lightning_sparsity._lightning import submodule

    cli = submodule("cli")
    misconfiguration = submodule("utilities.exceptions").MisconfigurationException
    user_errors = (ValueError, TypeError, FileNotFoundError, misconfiguration)

    class SparsityCLI(cli.LightningCLI):  # type: ignore[name-defined]
        """Reports config errors as one line (needs ``exit_on_error=False`` parsers)."""

        def parse_arguments(self, parser: Any, args: Any) -> None:
            try:
                super().parse_arguments(parser, args)
            except argparse.ArgumentError as err:
                if _debug():
                    raise
                raise CliError(_config_error(str(err))) from err

        def _parse_ckpt_path(self) -> None:
            try:
                super()._parse_ckpt_path()  # reads the hyperparameters of --ckpt_path
            except argparse.ArgumentError as err:
                if _debug():
                    raise
                raise CliError(f"--ckpt_path hyperparameters: {_config_error(str(err))}") from err
            except Exception:
                subcommand = self.config.get("subcommand")
                path = self.config[subcommand].get("ckpt_path") if subcommand else None
                if path and Path(path).is_file():
                    read_checkpoint(str(path))  # raises CliError if the file is the problem
                raise

        def _run_subcommand(self, subcommand: str) -> None:
            """A budget the model cannot have is a config error, found as the fit starts.

            One line, as for any bad config value, and the version directory this fit
            made (its config and hyperparameters, no step) is removed.
            """
            from lightning_sparsity.control.budget import BudgetError

            log_dir = self.trainer.log_dir  # the logger's, not made yet for a new version
            made = log_dir is not None and not Path(log_dir).exists()
            try:
                super()._run_subcommand(subcommand)
            except BudgetError as err:
                if _debug():
                    raise
                if made and self.trainer.global_step == 0 and Path(log_dir).is_dir():
                    shutil.rmtree(log_dir)
                raise CliError(one_line(str(err))) from err

        def before_instantiate_classes(self) -> None:
            _continue_logged_run(self.config)
            if edit is not None:
                edit(self.config)

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except Exception as err:
                root = _root_cause(err)
                if not isinstance(root, user_errors) or _debug():
                    raise
                raise CliError(one_line(str(root))) from err

    return SparsityCLI


def sparsity_cli(
    args: Sequence[str] | None,
    *,
    edit: Callable[[Any], None] | None = None,
    parser_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A LightningCLI configured by YAML: model and data by ``class_path`` (subclass mode).

    Args:
        args: The arguments, subcommand first unless ``run=False``; ``None`` reads
            ``sys.argv`` (the console script: LightningCLI warns when given ``args`` beside
            a command line).
        edit: Changes the parsed config (a ``jsonargparse.Namespace``) in place before the
            objects are built.
        parser_kwargs: For the parser; ``exit_on_error=False`` always (errors are raised).
        **kwargs: For ``LightningCLI`` (``run=False``, ``save_config_kwargs``, ...).

    Returns:
        The ``LightningCLI`` (with ``run=False``: built, not fitted).

    Raises:
        CliError: On a config or option error, or an error building the configured objects.
    """
    from lightning_sparsity._lightning import pl

    return _cli_class(edit)(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        parser_kwargs={**(parser_kwargs or {}), "exit_on_error": False},
        **kwargs,
    )
