"""A fake `tensorrt` module with the surface rerank_export.tensorrt_build and rerank_runtime.trt_backend use.

It keeps TensorRT's behaviour where the code depends on it: the first ILogger a process hands over receives every
later message; deserialize_cuda_engine returns None and logs why; set_input_shape and set_tensor_address return False;
set_optimization_profile_async raises RuntimeError; a USER_MANAGED context runs only with set_device_memory of the
size update_device_memory_size_for_shapes asked for; a context created from an IRuntimeConfig fails once that config is
gone; a strongly typed network refuses per-layer precision. The engine's maths is a `kernel(job, stream_handle)` that
enqueues work on the stream: numpy on fake CUDA memory here (numpy_kernel), a CuPy kernel on a real stream in
tests/test_gpu_trt_fake.py. What it computes, for every input row b and output j (expected_scores):
    rows[b] = sum over every input of the row's values (written to the context's scratch memory, then read back)
    out_j[b] = (j + 1) * rows[b] + 1000 * (active profile index)
"""

from __future__ import annotations

import enum
import json
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fake_cuda import FakeCudaRuntime, view


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT32 = "int32"
    INT64 = "int64"


class LayerType(enum.Enum):
    CONSTANT, SHAPE, CAST, IDENTITY, ELEMENTWISE = range(5)


class Strategy(enum.Enum):
    STATIC, ON_PROFILE_CHANGE, USER_MANAGED = range(3)


class BuilderFlag(enum.Enum):
    TF32, FP16, BF16, OBEY_PRECISION_CONSTRAINTS = range(4)


@dataclass
class Job:
    """One enqueue: addresses as bound, shapes as set, the active profile, the scratch memory."""

    profile: int
    batch: int
    inputs: list[tuple[int, np.dtype[Any], tuple[int, ...]]]
    outputs: list[int]
    scratch: int


def expected_scores(feeds: dict[str, np.ndarray], outputs: int, profile: int) -> list[np.ndarray]:
    batch = len(feeds["input_ids"])
    rows = sum(np.asarray(a).reshape(batch, -1).sum(axis=1, dtype=np.float64) for a in feeds.values())
    return [((j + 1) * rows + 1000.0 * profile).astype(np.float32) for j in range(outputs)]


def numpy_kernel(cuda: FakeCudaRuntime) -> Callable[[Job, int], None]:
    def launch(job: Job, stream: int) -> None:
        def run() -> None:
            rows = np.zeros(job.batch)
            for ptr, dtype, shape in job.inputs:
                rows += view(ptr, dtype, int(np.prod(shape))).reshape(job.batch, -1).sum(axis=1, dtype=np.float64)
            scratch = view(job.scratch, np.float64, job.batch)
            scratch[:] = rows
            for j, ptr in enumerate(job.outputs):
                view(ptr, np.float32, job.batch)[:] = (j + 1) * scratch + 1000.0 * job.profile

        cuda.enqueue(stream, run)

    return launch


@dataclass
class Knobs:
    reject_address: bool = False  # set_tensor_address returns False
    profile_error: bool = False  # set_optimization_profile_async raises
    refuse_enqueue: Callable[[int], bool] = lambda stream: False  # execute_async_v3 returns False for this stream
    build_error: bool = False  # build_serialized_network returns None after logging


def make_tensorrt(version: str, kernel: Callable[[Job, int], None], alloc: Callable[[int], int],
                  knobs: Knobs | None = None) -> types.ModuleType:
    """A fresh fake module (its own "first logger"). alloc(nbytes) -> address gives contexts their own memory."""
    trt = types.ModuleType("tensorrt")
    major, minor = (int(x) for x in version.split(".")[:2])
    state = types.SimpleNamespace(logger=None, knobs=knobs or Knobs(), plans=[], messages=[])

    def log(severity: Severity, msg: str) -> None:
        state.messages.append(msg)
        if state.logger is not None:
            state.logger.log(severity, msg)

    def keep_first(logger: Any) -> None:  # TensorRT keeps the first logger of the process
        state.logger = state.logger or logger

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            pass

    class RuntimeConfig:
        def __init__(self) -> None:
            self.strategy = Strategy.STATIC

        def set_execution_context_allocation_strategy(self, strategy: Strategy) -> None:
            self.strategy = strategy

    class Context:
        def __init__(self, engine: Engine, strategy: Strategy, config: RuntimeConfig | None) -> None:
            self.engine, self.profile, self.shapes, self.addresses = engine, 0, {}, {}
            self.strategy = config.strategy if config is not None else strategy
            self._config = weakref.ref(config) if config is not None else None  # TensorRT holds a raw pointer
            self.memory: tuple[int, int] | None = None
            self._own = 0

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            if state.knobs.profile_error or not 0 <= index < len(self.engine.plan["profiles"]):
                raise RuntimeError(f"IExecutionContext::setOptimizationProfileAsync: invalid profile index {index}")
            self.profile, self.shapes = index, {}
            return True

        def _range(self, name: str) -> list[list[int]]:
            return self.engine.plan["profiles"][self.profile][name]

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            lo, _, hi = self._range(name)
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                log(Severity.ERROR, f"IExecutionContext::setInputShape: {name} {tuple(shape)} is outside [{lo}, {hi}]")
                return False
            self.shapes[name] = tuple(int(s) for s in shape)
            return True

        def _batch(self) -> int:
            return self.shapes["input_ids"][0]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.shapes[name] if name in self.shapes else (self._batch(),)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if state.knobs.reject_address or not ptr:
                log(Severity.ERROR, f"IExecutionContext::setTensorAddress: address {ptr:#x} refused for {name}")
                return False
            self.addresses[name] = ptr
            return True

        def update_device_memory_size_for_shapes(self) -> int:
            return self._batch() * 8 + 64

        def set_device_memory(self, ptr: int, size: int) -> None:
            self.memory = (ptr, size)

        def execute_async_v3(self, stream: int) -> bool:
            plan = self.engine.plan
            if self._config is not None and self._config() is None:
                log(Severity.ERROR, "IExecutionContext::enqueueV3: the IRuntimeConfig of this context was destroyed")
                return False
            unbound = [n for n, _ in plan["inputs"] + plan["outputs"] if n not in self.addresses]
            unshaped = [n for n, _ in plan["inputs"] if n not in self.shapes]
            if unbound or unshaped or state.knobs.refuse_enqueue(stream):
                log(Severity.ERROR, f"IExecutionContext::enqueueV3: unbound {unbound}, unshaped {unshaped}")
                return False
            if self.strategy == Strategy.USER_MANAGED:
                if self.memory is None or self.memory[1] < self.update_device_memory_size_for_shapes():
                    log(Severity.ERROR, f"IExecutionContext::enqueueV3: device memory {self.memory} too small")
                    return False
                scratch = self.memory[0]
            else:
                largest = max(p["input_ids"][2][0] for p in plan["profiles"])
                self._own = self._own or alloc(largest * 8 + 64)
                scratch = self._own
            inputs = [(self.addresses[n], np.dtype(d), self.shapes[n]) for n, d in plan["inputs"]]
            kernel(Job(self.profile, self._batch(), inputs, [self.addresses[n] for n, _ in plan["outputs"]], scratch),
                   stream)
            return True

    class Engine:
        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan
            self._names = [n for n, _ in plan["inputs"] + plan["outputs"]]
            self.num_io_tensors, self.num_optimization_profiles = len(self._names), len(plan["profiles"])

        def get_tensor_name(self, i: int) -> str:
            return self._names[i]

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType(dict(self.plan["inputs"] + self.plan["outputs"])[name])

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name in dict(self.plan["inputs"]) else "OUTPUT"

        def get_tensor_profile_shape(self, name: str, k: int) -> list[list[int]]:
            return self.plan["profiles"][k][name]

        def create_execution_context(self, strategy: Strategy = Strategy.STATIC,
                                     runtime_config: RuntimeConfig | None = None) -> Context:
            return Context(self, strategy, runtime_config)

    class Engine1011(Engine):  # TensorRT >= 10.11: the strategy goes through an IRuntimeConfig
        def create_runtime_config(self) -> RuntimeConfig:
            return RuntimeConfig()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            keep_first(logger)

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (not an engine plan)")
                return None
            if plan["version"] != version:
                log(Severity.ERROR, f"IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (the engine plan "
                                    f"is not compatible with this version of TensorRT, expecting library version "
                                    f"{version} got {plan['version']})")
                return None
            return (Engine1011 if (major, minor) >= (10, 11) else Engine)(plan)

    _add_builder(trt, version, major, state, log, keep_first)
    trt.__version__, trt.ILogger, trt.Runtime = version, ILogger, Runtime
    trt.DataType, trt.float32, trt.float16, trt.LayerType = DataType, DataType.FLOAT, DataType.HALF, LayerType
    trt.ExecutionContextAllocationStrategy, trt.BuilderFlag = Strategy, BuilderFlag
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: np.dtype(dtype.value).type
    trt.state = state
    return trt


def _add_builder(trt: types.ModuleType, version: str, major: int, state: Any, log: Callable[..., None],
                 keep_first: Callable[[Any], None]) -> None:
    onnx_types = {1: DataType.FLOAT.value, 7: DataType.INT64.value, 10: DataType.HALF.value, 6: DataType.INT32.value}
    strongly_typed_bit = 1 if major == 10 else 0

    class Tensor:
        def __init__(self, name: str, dtype: str = "float32") -> None:
            self.name, self.dtype = name, DataType(dtype)

    class Layer:
        def __init__(self, network: Network, op: str) -> None:
            self.network, self.num_outputs = network, 1
            self.type = {"Cast": LayerType.CAST, "Constant": LayerType.CONSTANT}.get(op, LayerType.ELEMENTWISE)
            self.pinned = False

        def get_output(self, j: int) -> Tensor:
            return Tensor(f"out{j}")

        def _pin(self) -> None:
            if self.network.strongly_typed:
                raise RuntimeError("ILayer::setPrecision: strongly typed networks take no per-layer precision")
            self.pinned = True

        precision = property(lambda self: DataType.FLOAT, lambda self, value: self._pin())

        def set_output_type(self, j: int, dtype: DataType) -> None:
            self._pin()

    class Network:
        def __init__(self, flags: int) -> None:
            self.strongly_typed = major >= 11 or bool(flags & (1 << strongly_typed_bit))
            self.inputs: list[tuple[str, str]] = []
            self.outputs: list[tuple[str, str]] = []
            self.layers: list[Layer] = []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i: int) -> Tensor:
            return Tensor(*self.inputs[i])

        def get_output(self, i: int) -> Tensor:
            return Tensor(*self.outputs[i])

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            import onnx

            model = onnx.load(path, load_external_data=False)

            def io(values: Any) -> list[tuple[str, str]]:
                return [(v.name, onnx_types[v.type.tensor_type.elem_type]) for v in values]

            self.network.inputs, self.network.outputs = io(model.graph.input), io(model.graph.output)
            self.network.layers = [Layer(self.network, n.op_type) for n in model.graph.node]
            return True

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (TensorRT's names)
            self.shapes[name] = [list(min), list(opt), list(max)]

    class TimingCache:
        def serialize(self) -> bytes:
            return b"fake timing cache"

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: set[str] = {BuilderFlag.TF32.name}
            self.profiles: list[OptimizationProfile] = []
            self.builder_optimization_level, self.progress_monitor = 3, None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.workspace = size

        def set_flag(self, flag: BuilderFlag) -> None:
            self.flags.add(flag.name)

        def clear_flag(self, flag: BuilderFlag) -> None:
            self.flags.discard(flag.name)

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache()

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            keep_first(logger)

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            if state.knobs.build_error:
                log(Severity.ERROR, "IBuilder::buildSerializedNetwork: Error Code 4: fake build failure")
                return None
            plan = {"version": version, "inputs": network.inputs, "outputs": network.outputs,
                    "profiles": [p.shapes for p in config.profiles], "strongly_typed": network.strongly_typed,
                    "flags": sorted(config.flags), "pinned": sum(layer.pinned for layer in network.layers)}
            state.plans.append(plan)
            return json.dumps(plan).encode()

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    trt.Builder, trt.OnnxParser, trt.IProgressMonitor = Builder, OnnxParser, IProgressMonitor
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=strongly_typed_bit)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
