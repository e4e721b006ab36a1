"""Calls into sandboxed code, judged outside it: the wire format, the sandbox's server, the judge.

A HumanEval verdict must not depend on anything the candidate's process does, since that process
is the policy's: it can read its own memory, patch builtins, trace frames, rewrite stdout. So the
candidate runs in the sandbox as a *server* of calls (:func:`serve`) and the task's ``check``
runs in a separate trusted process, the *judge* (:func:`judge`), with ``candidate`` replaced by a
proxy that sends each call's arguments to the sandbox and decodes the return value. Only plain data
crosses (:func:`encode` / :func:`decode`: None, bool, int, float with inf and nan, str, list, tuple,
dict, set, frozenset; never pickle), on dedicated pipes (descriptors 3 and 4 in the sandbox), so
printing cannot corrupt it. The candidate never sees the test code, the expected values or any
secret; a return value that is not plain data is a failed call.

This file runs in three places and imports only the standard library: the caller imports it, the
judge runs it as a script (``python -I -S -B harness.py judge CONFIG``), and the sandbox runs its
source followed by a call to :func:`serve`.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import math
import os
import re
import resource
import select
import sys
import time

_MAX_DEPTH = 64  # nesting of lists, tuples, dicts and sets in a reply
_MAX_ARGUMENT_DEPTH = 2 * _MAX_DEPTH  # arguments may wrap a reply (a test that feeds one back)
MAX_REPLY_ELEMENTS = 100_000  # values in one reply (containers and scalars), counted on the wire
_MAX_EQUAL_HASHES = 16  # elements of one set (or keys of one dict) that may share a hash value
_SCALARS = (type(None), bool, int, float, str)
# A JSON string, closed or running to the end of the line, matched in one pass (possessive: a
# string is never rescanned from a later quote), so that separators inside strings are not counted.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)')


class WireError(ValueError):
    """A value that is not plain data, or a message that is not in the wire format."""


def encode(value: object, *, max_depth: int = _MAX_DEPTH) -> object:
    """``value`` as JSON-ready data; exact built-in types only (a subclass may lie about equality)."""
    return _encode(value, 0, max_depth)


def _encode(value: object, depth: int, max_depth: int) -> object:
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind in _SCALARS:
        return value
    if depth >= max_depth:
        raise WireError(f"nested deeper than {max_depth}")
    depth += 1
    if kind is list:
        return [_encode(item, depth, max_depth) for item in value]
    if kind is tuple:
        return {"tuple": [_encode(item, depth, max_depth) for item in value]}
    if kind in (set, frozenset):
        return {kind.__name__: [_encode(item, depth, max_depth) for item in value]}
    if kind is dict:
        return {
            "dict": [[_encode(k, depth, max_depth), _encode(v, depth, max_depth)] for k, v in value.items()]
        }
    raise WireError(f"not plain data: {kind.__name__}")


def decode(data: object, *, max_depth: int = _MAX_DEPTH, max_elements: int | None = None) -> object:
    """The inverse of :func:`encode`, strict: anything else raises :class:`WireError`.

    Linear in the size of ``data``: nesting stops at ``max_depth``, values at ``max_elements``, and
    a set (or dict) whose elements (keys) share one hash value more than a few times is refused,
    since building it would take time quadratic in its size.
    """
    return _Decoder(max_depth, max_elements).decode(data, 0)


class _Decoder:
    def __init__(self, max_depth: int, max_elements: int | None) -> None:
        self.max_depth = max_depth
        self.left = max_elements

    def decode(self, data: object, depth: int) -> object:
        if self.left is not None:
            self.left -= 1
            if self.left < 0:
                raise WireError("more elements than the reply may hold")
        kind = type(data)
        if kind in _SCALARS:
            return data
        if depth >= self.max_depth:
            raise WireError(f"nested deeper than {self.max_depth}")
        depth += 1
        if kind is list:
            return [self.decode(item, depth) for item in data]
        if kind is not dict or len(data) != 1:
            raise WireError(f"not in the wire format: {kind.__name__}")
        ((tag, body),) = data.items()
        if tag == "float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if type(body) is not list:
            raise WireError(f"not in the wire format: {tag!r}")
        if tag == "tuple":
            return tuple(self.decode(item, depth) for item in body)
        if tag in ("set", "frozenset"):
            items = [self.decode(item, depth) for item in body]
            _check_hashes(items, tag)
            return set(items) if tag == "set" else frozenset(items)
        if tag == "dict":
            pairs = []
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("a dict entry is not a [key, value] pair")
                pairs.append((self.decode(pair[0], depth), self.decode(pair[1], depth)))
            _check_hashes([key for key, _ in pairs], "dict")
            return dict(pairs)
        raise WireError(f"not in the wire format: {tag!r}")


def _check_hashes(items: list, what: str) -> None:
    """Refuse unhashable elements, and more than :data:`_MAX_EQUAL_HASHES` sharing one hash value
    (each insertion compares with all earlier ones of its hash: quadratic time, outside any clock)."""
    counts: dict[int, int] = {}
    for item in items:
        try:
            value = hash(item)
        except TypeError as err:
            raise WireError(str(err)) from None
        count = counts.get(value, 0) + 1
        if count > _MAX_EQUAL_HASHES:
            raise WireError(f"a {what} whose elements share one hash value ({count} or more): refused")
        counts[value] = count


def dumps(message: dict) -> bytes:
    """One message as a line of ASCII JSON (strings are escaped, so it holds no newline)."""
    return json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def loads(line: bytes, *, max_elements: int | None = None) -> dict:
    """Parse one message; anything but a JSON object (or a bare NaN / Infinity) raises WireError.

    With ``max_elements``, a message with more values than that is refused from its bytes (its
    separators and brackets outside strings, counted in linear time) before any is built.
    """
    if max_elements is not None and _count_values(line, max_elements) > max_elements:
        raise WireError(f"a message of more than {max_elements} elements")

    def no_constants(name: str) -> None:
        raise WireError(f"bare {name} is not in the wire format")

    try:
        message = json.loads(line, parse_constant=no_constants)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, oversized ints, deep nesting
        raise WireError(f"not JSON: {err}") from None
    if type(message) is not dict:
        raise WireError("a message must be a JSON object")
    return message


def _count_values(line: bytes, limit: int) -> int:
    """An upper bound on the values in a JSON text: each one but the first follows a ``,``, a ``:``
    or an opening bracket outside strings (counted with strings too first, which is enough when
    that is within ``limit``)."""

    def separators(text: bytes) -> int:
        return text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{") + 1

    count = separators(line)
    if count > limit and b'"' in line:
        count = separators(_JSON_STRING.sub(b'""', line))
    return count


# --- the sandbox side ----------------------------------------------------------------------------


def serve(entry_point: str, source: str = "candidate.py", requests: int = 3, responses: int = 4) -> None:
    """In the sandbox: load the candidate, then answer calls until the judge closes the pipe.

    Runs in the untrusted process, so nothing here is relied on: the judge checks every message.
    """
    write, read_line = os.write, os.fdopen(requests, "rb").readline

    def send(message: dict) -> None:
        data = dumps(message)
        while data:
            data = data[write(responses, data) :]

    send({"hello": 1})
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        with open(source, encoding="utf-8") as fh:
            exec(compile(fh.read(), source, "exec"), namespace)
        func = namespace[entry_point]
        if not callable(func):
            raise TypeError(f"{entry_point} is not callable")
    except BaseException as err:  # SystemExit included: the candidate is not there to be called
        send({"load_error": type(err).__name__})
        return
    send({"ready": 1})
    while True:
        line = read_line()
        if not line:
            return
        request = loads(line)
        answer: dict = {"id": request["id"]}
        try:
            args = decode(request["args"], max_depth=_MAX_ARGUMENT_DEPTH)
            kwargs = {
                key: decode(value, max_depth=_MAX_ARGUMENT_DEPTH) for key, value in request["kwargs"].items()
            }
            result = func(*args, **kwargs)
        except BaseException as err:
            answer["raised"] = type(err).__name__
        else:
            try:
                answer["ok"] = encode(result)
            except (WireError, ValueError, RecursionError) as err:
                answer["bad_return"] = f"{type(result).__name__}: {err}"[:200]
        send(answer)


# --- the trusted side ----------------------------------------------------------------------------


class HarnessError(BaseException):
    """The harness or the task, not the candidate, failed (the reward is then None).

    A BaseException so that a ``check`` catching ``Exception`` cannot swallow it.
    """


class CandidateError(Exception):
    """A call to the candidate did not return plain data: it raised, timed out, died or lied."""


MAX_STRETCH = 4.0  # a wait may last this many times its charged limit in wall-clock time


class CandidateClock:
    """The candidate's time: wall-clock time minus the time its process, or the judge waiting on
    it, waited for a CPU.

    On a machine running more sandboxes than cores, a correct but CPU-bound solution would
    otherwise time out for the machine's load; a sleeping or looping one is charged in full. The
    kernel's per-task run delay (``/proc/<pid>/schedstat``) is not something the candidate can
    forge; it can only raise its own by competing with itself, which :data:`MAX_STRETCH` bounds.

    The program's process is found by :meth:`attach` once the program has greeted the judge, so
    it exists then: found by the shape of the launcher's tree, never by racing its start. Without
    schedstat (or the process) the candidate's share is the wall clock (:attr:`kind` says which).
    """

    def __init__(self, launcher_pid: int | None) -> None:
        self.launcher_pid = launcher_pid
        self.path: str | None = None

    def attach(self) -> None:
        """Find the program's process (call after its first message: it is alive and forked)."""
        pid = _program_pid(self.launcher_pid) if self.launcher_pid else None
        if pid is not None and _delay(f"/proc/{pid}/schedstat") is not None:
            self.path = f"/proc/{pid}/schedstat"

    @property
    def kind(self) -> str:
        """``"candidate"`` when the program's run delay is subtracted, else ``"wall"``."""
        return "candidate" if self.path else "wall"

    def run_delay(self) -> float:
        """Seconds the program's main thread and this judge have spent runnable but not running."""
        own = _delay("/proc/thread-self/schedstat") or 0.0
        program = _delay(self.path) if self.path else None
        return own + (program or 0.0)


def _delay(path: str) -> float | None:
    """The run delay in a schedstat file, in seconds (None where it cannot be read)."""
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _program_pid(launcher_pid: int) -> int | None:
    """The program's pid: launcher -> setup -> init (each the only child of the one before) -> the
    program, init's first child (pid 2 of its namespace; init's only child without one)."""
    setup = _only_child(launcher_pid)
    init = _only_child(setup) if setup else None
    if init is None:
        return None
    children = _children(init)
    if len(children) == 1:
        return children[0]
    for child in children:
        try:
            with open(f"/proc/{child}/status", encoding="ascii") as fh:
                nspid = next(line.split()[1:] for line in fh if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if nspid and nspid[-1] == "2":
            return child
    return None


def _children(pid: int) -> list[int]:
    """The children of ``pid``'s main thread, read from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(child) for child in fh.read().split()]
    except OSError:
        return []


def _only_child(pid: int) -> int | None:
    """The single child of ``pid`` (None if it has none or several)."""
    children = _children(pid)
    return children[0] if len(children) == 1 else None


class Channel:
    """The judge's end of the pipes: one call at a time, each within its time limits."""

    def __init__(self, requests: int, responses: int, *, call_timeout_s: float, total_timeout_s: float,
                 startup_timeout_s: float, max_message_bytes: int, clock: CandidateClock | None = None) -> None:  # fmt: skip
        self.clock = clock or CandidateClock(None)
        self.requests, self.responses = requests, responses
        self.call_timeout_s = call_timeout_s
        self.budget_s = total_timeout_s  # time the candidate may use, spent while the judge waits
        self.startup_timeout_s = startup_timeout_s
        self.max_message_bytes = max_message_bytes
        self.buffer = bytearray()
        self.scanned = 0  # bytes of the buffer already searched for a newline
        self.calls = 0
        self.dead: str | None = None
        self.next_id = 0

    def start(self) -> None:
        """Wait for the sandbox's interpreter (a harness matter), then for the candidate to load."""
        try:
            hello = self._receive(self.startup_timeout_s, charge=False)
        except CandidateError as err:
            raise HarnessError(f"the sandbox did not start: {err}") from None
        if hello != {"hello": 1}:
            self.dead = "the sandbox's first message was not its greeting"
            return
        self.clock.attach()  # the program exists: it just wrote to us
        try:
            loaded = self._receive(self.budget_s)
        except CandidateError as err:
            self.dead = f"loading the candidate: {err}"
            return
        if loaded != {"ready": 1}:
            self.dead = f"the candidate did not load ({str(loaded.get('load_error', loaded))[:100]})"

    def call(self, args: tuple, kwargs: dict) -> object:
        """Send one call and return its decoded result; raise CandidateError for anything else."""
        if self.dead:
            raise CandidateError(self.dead)
        try:
            request = {
                "id": self.next_id,
                "args": encode(list(args), max_depth=_MAX_ARGUMENT_DEPTH),
                "kwargs": {k: encode(v, max_depth=_MAX_ARGUMENT_DEPTH) for k, v in kwargs.items()},
            }
        except WireError as err:
            raise HarnessError(f"the test passes an argument that is not plain data ({err})") from None
        self.calls += 1
        if self.buffer or select.select([self.responses], [], [], 0)[0]:
            self.dead = "the sandbox sent a message before it was asked (or exited)"
            raise CandidateError(self.dead)
        try:
            data = dumps(request)
            while data:
                data = data[os.write(self.requests, data) :]
        except OSError as err:
            self.dead = f"the sandbox stopped reading ({err.strerror})"
            raise CandidateError(self.dead) from None
        try:
            answer = self._receive(min(self.call_timeout_s, self.budget_s))
        except CandidateError as err:
            self.dead = str(err)
            raise
        if (
            set(answer) not in ({"id", "ok"}, {"id", "raised"}, {"id", "bad_return"})
            or answer["id"] != self.next_id
        ):
            self.dead = "an answer out of protocol"
            raise CandidateError(self.dead)
        self.next_id += 1
        if "ok" not in answer:
            raise CandidateError(str(answer.get("raised") or answer.get("bad_return"))[:200])
        try:
            return decode(answer["ok"], max_elements=MAX_REPLY_ELEMENTS)
        except WireError as err:
            self.dead = f"a return value out of protocol ({err})"
            raise CandidateError(self.dead) from None

    def _receive(self, timeout_s: float, *, charge: bool = True) -> dict:
        """One message, waiting at most ``timeout_s`` of the candidate's time (charged to its
        budget), and at most :data:`MAX_STRETCH` times that in wall-clock time."""
        start, delay = time.monotonic(), self.clock.run_delay()

        def used() -> float:
            return time.monotonic() - start - (self.clock.run_delay() - delay)

        try:
            while (end := self.buffer.find(b"\n", self.scanned)) < 0:
                self.scanned = len(self.buffer)
                if self.scanned > self.max_message_bytes:
                    raise CandidateError(f"a message over {self.max_message_bytes} bytes")
                remaining = timeout_s - used()
                stretch = start + MAX_STRETCH * timeout_s - time.monotonic()
                if remaining <= 0 or stretch <= 0:
                    raise CandidateError("timed out")
                # Charged time runs no faster than the wall clock: wake when it could be up.
                if not select.select([self.responses], [], [], min(remaining, stretch))[0]:
                    continue
                chunk = os.read(self.responses, 1 << 16)
                if not chunk:
                    raise CandidateError("the sandbox exited")
                self.buffer += chunk
        finally:
            if charge:
                self.budget_s -= max(used(), 0.0)
        if end > self.max_message_bytes:
            raise CandidateError(f"a message over {self.max_message_bytes} bytes")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        self.scanned = 0
        try:
            return loads(line, max_elements=MAX_REPLY_ELEMENTS)
        except WireError as err:
            raise CandidateError(str(err)) from None


def prepare_check(test: str, entry_point: str, *, fraction: bool) -> tuple[ast.Module, str]:
    """The test's module, parsed, with (for ``fraction``) every assert of ``check`` rewritten as a
    call to ``__ks_assert__(lambda: test, counts)``; ``counts`` is whether the assertion involves
    the candidate: it calls it, or uses a value derived from a call. Returns the tree and the name
    of ``check``'s parameter."""
    try:
        tree = ast.parse(test)
    except SyntaxError as err:
        raise HarnessError(f"the test does not parse: {err}") from None
    checks = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if not checks or not checks[-1].args.args:
        raise HarnessError("the test defines no check(candidate)")
    check = checks[-1]
    param = check.args.args[0].arg
    if fraction:
        derived = _candidate_values(check, {param, entry_point})

        class Rewriter(ast.NodeTransformer):
            def visit_Assert(self, node: ast.Assert) -> ast.AST:
                counts = _involves(node.test, derived)
                lam = ast.Lambda(args=_no_args(), body=node.test)
                call = ast.Call(ast.Name("__ks_assert__", ast.Load()), [lam, ast.Constant(counts)], [])
                return ast.copy_location(ast.Expr(call), node)

        Rewriter().visit(check)
        ast.fix_missing_locations(tree)
    return tree, param


def _candidate_values(check: ast.FunctionDef, callees: set[str]) -> set[str]:
    """Names in ``check`` bound to the candidate or to something computed from its results."""
    derived = set(callees)
    changed = True
    while changed:
        changed = False
        for node in ast.walk(check):
            bindings: list[tuple[ast.AST | None, list[ast.AST]]] = []
            if isinstance(node, ast.Assign):
                bindings.append((node.value, node.targets))
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.NamedExpr)):
                bindings.append((node.value, [node.target]))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                bindings.append((node.iter, [node.target]))
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                bindings += [
                    (item.context_expr, [item.optional_vars]) for item in node.items if item.optional_vars
                ]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and node is not check:
                name = getattr(node, "name", None)
                if name is not None and any(_involves(stmt, derived) for stmt in node.body):
                    bindings.append((None, [ast.Name(name, ast.Store())]))
            for value, targets in bindings:
                if value is None or _involves(value, derived):
                    for target in targets:
                        for name in ast.walk(target):
                            if isinstance(name, ast.Name) and name.id not in derived:
                                derived.add(name.id)
                                changed = True
    return derived


def _involves(node: ast.AST, names: set[str]) -> bool:
    """Whether ``node`` reads any of ``names``."""
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _free_names(check: ast.FunctionDef, namespace: dict) -> list[str]:
    """Names ``check`` reads that nothing defines: helpers a missing code prompt should have given."""
    bound = {
        arg.arg for node in ast.walk(check) if isinstance(node, ast.arguments) for arg in _all_args(node)
    }
    for node in ast.walk(check):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    loads = {n.id for n in ast.walk(check) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return sorted(n for n in loads - bound if n not in namespace and not hasattr(builtins, n))


def _all_args(args: ast.arguments) -> list[ast.arg]:
    return [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, [args.vararg, args.kwarg])]


def _no_args() -> ast.arguments:
    """An empty argument list for a lambda."""
    return ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
    )


def run_check(config: dict, channel: Channel) -> dict:
    """Run the task's ``check`` against the sandboxed candidate; the verdict, as plain data.

    The code prompt (trusted dataset text: it may define helpers the check uses, such as ``poly``)
    and the test run here; the entry point's name and ``candidate`` both call the sandbox.
    """
    fraction = bool(config["fraction"])
    entry_point = config["entry_point"]
    counts = {"total": 0, "held": 0}

    def __ks_assert__(condition, counted: bool) -> None:
        try:
            held = bool(condition())
        except Exception:
            held = False
        if counted:
            counts["total"] += 1
            counts["held"] += held

    def candidate(*args, **kwargs):
        return channel.call(args, kwargs)

    candidate.__name__ = candidate.__qualname__ = entry_point
    namespace: dict = {"__name__": "__knapsack_check__", "__builtins__": builtins}
    if config["prefix"].strip():
        with contextlib.suppress(Exception):  # a prompt that is not code defines no helpers: checked below
            exec(compile(config["prefix"], "<code prompt>", "exec"), namespace)
    tree, _param = prepare_check(config["test"], entry_point, fraction=fraction)
    try:
        exec(compile(tree, "<test>", "exec"), namespace)
    except Exception as err:
        raise HarnessError(f"the test module raised {type(err).__name__}: {err}") from None
    namespace[entry_point] = candidate
    namespace["__ks_assert__"] = __ks_assert__
    check = namespace.get("check")
    check_node = next(n for n in reversed(tree.body) if isinstance(n, ast.FunctionDef) and n.name == "check")
    missing = _free_names(check_node, namespace)
    if missing or not callable(check):
        raise HarnessError(
            f"check() uses {', '.join(missing)}, which neither the test nor the code prompt defines: "
            "give the reward the task's code prompt (a `code_prompt` column)"
        )
    channel.start()
    verdict: dict = {"finished": False, "failure": None}
    try:
        check(candidate)
        verdict["finished"] = True
    except Exception as err:
        verdict["failure"] = f"{type(err).__name__}: {err}"[:300]
    verdict.update(calls=channel.calls, clock=channel.clock.kind, **counts)
    return verdict


def judge(config_path: str) -> int:
    """The trusted judge's entry point: read the configuration, run the check, write the verdict."""
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    verdict_fd = config["verdict_fd"]
    limit = config["memory_mb"] << 20  # the judge's own bound: nothing it decodes or runs grows past it
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (a test's prints go nowhere)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
    channel = Channel(
        config["requests_fd"],
        config["responses_fd"],
        call_timeout_s=config["call_timeout_s"],
        total_timeout_s=config["timeout_s"],
        startup_timeout_s=config["startup_timeout_s"],
        max_message_bytes=config["max_message_bytes"],
        clock=CandidateClock(config.get("launcher_pid")),
    )
    try:
        verdict = run_check(config, channel)
    except HarnessError as err:
        verdict = {"harness_error": str(err)[:1000]}
    data = json.dumps(verdict).encode()
    while data:
        data = data[os.write(verdict_fd, data) :]
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["judge"]:
    sys.exit(judge(sys.argv[2]))
