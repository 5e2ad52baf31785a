"""What a `tensorboard --logdir ROOT` server serves, through TensorBoard's own plugins."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import custom_scalars_plugin, layout_pb2
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment


def tb_context(root: Path) -> base_plugin.TBContext:
    """What a `tensorboard --logdir root` server's plugins are given."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(root))
    return base_plugin.TBContext(logdir=str(root), data_provider=provider, multiplexer=multiplexer)


def scalar_tags(root: Path) -> dict[str, set[str]]:
    """Run -> its scalar tags, as TensorBoard's scalars plugin lists them."""
    multiplexer = tb_context(root).multiplexer
    return {run: set(tags) for run, tags in multiplexer.PluginRunToTagToContent("scalars").items()}


def layout_shown(root: Path) -> layout_pb2.Layout:
    """The custom-scalars layout the plugin merges from every run under ``root``."""
    plugin = custom_scalars_plugin.CustomScalarsPlugin(tb_context(root))
    served = plugin.layout_impl(context.RequestContext(), "")  # the JSON the page gets
    return json_format.Parse(served, layout_pb2.Layout())


def experiment_shown(root: Path) -> api_pb2.Experiment:
    """The HParams experiment the plugin serves, in the order it serves it."""
    backend = backend_context.Context(tb_context(root))
    request = api_pb2.GetExperimentRequest()
    return get_experiment.Handler(context.RequestContext(), backend, "", request).run()


def ticked(experiment: api_pb2.Experiment) -> tuple[list[str], list[str]]:
    """The columns the HParams dashboard ticks by default.

    Its frontend (tf-hparams-query-pane, TensorBoard 2.x) sorts the hparams with ``differs``
    first (stable) and ticks the first five; of the metrics, the first five.
    """
    infos = sorted(experiment.hparam_infos, key=lambda info: not info.differs)
    return [i.name for i in infos[:5]], [m.name.tag for m in experiment.metric_infos[:5]]
