"""How far a ComfyUI prompt has come, from its WebSocket messages: a small pure model, no I/O.

ComfyUI reports a prompt by node (`execution_cached`, `executing`, `progress_state`, `executed`) and a node's
steps (`progress`, e.g. a sampler's). The job's progress combines both: nodes done of the nodes to run (cached
ones count as done) plus the running node's share of its steps. It only grows, and is 1.0 only at success.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressUpdate:
    value: int  # steps of the running node (0 of 0 when it reports none)
    max: int
    node: str | None
    fraction: float = 0.0  # of the whole job, 0..1
    nodes_done: int = 0
    nodes_total: int = 0

    @property
    def percent(self) -> float:
        return round(100.0 * self.fraction, 1)


class PromptProgress:
    """Folds one prompt's messages into its progress; `apply` says whether what a follower sees changed."""

    __slots__ = ("_done", "_nodes", "fraction", "max", "node", "value")

    def __init__(self, nodes: Collection[str]) -> None:
        # The workflow's nodes: ComfyUI runs those an output needs, which in a hub workflow is all of them.
        self._nodes = frozenset(nodes)
        self._done: set[str] = set()
        self.node: str | None = None
        self.value = 0
        self.max = 0
        self.fraction = 0.0

    def apply(self, kind: Any, data: dict[str, Any]) -> bool:
        """Take one message of the prompt; True when the progress (fraction, node or steps) moved."""
        before = (self.fraction, self.node, self.value, self.max)
        if kind == "progress":
            self._steps(data)
        elif kind == "executing":
            self._executing(data.get("node"))
        elif kind == "progress_state":
            self._finished_in(data.get("nodes"))
        elif kind in ("executed", "execution_cached"):
            nodes = [data.get("node")] if kind == "executed" else data.get("nodes")
            self._mark_done(nodes if isinstance(nodes, list) else [])
        elif kind == "execution_success":
            self._done.update(self._nodes)
            self.fraction = 1.0
            return before[0] != 1.0
        else:
            return False
        self._recompute()
        return before != (self.fraction, self.node, self.value, self.max)

    def update(self) -> ProgressUpdate:
        return ProgressUpdate(
            value=self.value,
            max=self.max,
            node=self.node,
            fraction=self.fraction,
            nodes_done=len(self._done),
            nodes_total=len(self._nodes),
        )

    def _steps(self, data: dict[str, Any]) -> None:
        try:
            value, maximum = int(data["value"]), int(data["max"])
        except (KeyError, TypeError, ValueError):
            return
        node = data.get("node")
        if node is not None and str(node) != self.node:  # a node we had not seen start (no `executing` for it)
            self._executing(node)
        self.value, self.max = max(0, value), max(0, maximum)

    def _executing(self, node: Any) -> None:
        if node is None:  # the prompt's end (success, error or interrupt alike): nothing runs any more
            return
        node = str(node)
        if self.node is not None and self.node != node:
            self._mark_done([self.node])  # ComfyUI runs one node at a time: the previous one has finished
        self.node, self.value, self.max = node, 0, 0

    def _finished_in(self, nodes: Any) -> None:
        # A snapshot of every node so far, re-sent at each change: only the running node's state is news (the
        # others were counted by `executing`/`executed`/`execution_cached`), so one look, not a loop per message.
        if isinstance(nodes, dict) and self.node is not None and _finished(nodes.get(self.node)):
            self._mark_done([self.node])

    def _mark_done(self, nodes: list[Any]) -> None:
        for node in nodes:
            if node is not None and str(node) in self._nodes:
                self._done.add(str(node))
                if str(node) == self.node:
                    self.value = self.max  # its last step may have had no `progress` message of its own

    def _recompute(self) -> None:
        total = len(self._nodes)
        if not total:
            return
        share = 0.0
        if self.node is not None and self.node not in self._done and self.max > 0:
            share = min(self.value, self.max) / self.max
        # Below 1.0 until ComfyUI reports success: the last node may still be writing its file.
        fraction = min((len(self._done) + share) / total, 0.999)
        if fraction > self.fraction:
            self.fraction = fraction


def _finished(state: Any) -> bool:
    return isinstance(state, dict) and state.get("state") == "finished"
