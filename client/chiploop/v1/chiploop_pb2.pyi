from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResetMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESET_MODE_UNSPECIFIED: _ClassVar[ResetMode]
    RESET_MODE_ZERO: _ClassVar[ResetMode]
    RESET_MODE_SUBTRACT: _ClassVar[ResetMode]

class RunMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_MODE_UNSPECIFIED: _ClassVar[RunMode]
    RUN_MODE_ASYNC_BREADTH_FIRST: _ClassVar[RunMode]
    RUN_MODE_SYNC: _ClassVar[RunMode]
    RUN_MODE_ASYNC_DEPTH_FIRST: _ClassVar[RunMode]
RESET_MODE_UNSPECIFIED: ResetMode
RESET_MODE_ZERO: ResetMode
RESET_MODE_SUBTRACT: ResetMode
RUN_MODE_UNSPECIFIED: RunMode
RUN_MODE_ASYNC_BREADTH_FIRST: RunMode
RUN_MODE_SYNC: RunMode
RUN_MODE_ASYNC_DEPTH_FIRST: RunMode

class Array(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ChipLimits(_message.Message):
    __slots__ = ("chip_model", "cores", "max_destinations", "weight_min", "weight_max", "state_min", "state_max", "max_kernel", "strides", "max_padding", "pools", "max_channels", "max_input_size", "max_output_size", "kernel_memory", "neuron_memory")
    CHIP_MODEL_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MAX_DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_MIN_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_MAX_FIELD_NUMBER: _ClassVar[int]
    STATE_MIN_FIELD_NUMBER: _ClassVar[int]
    STATE_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_KERNEL_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    MAX_PADDING_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_MEMORY_FIELD_NUMBER: _ClassVar[int]
    NEURON_MEMORY_FIELD_NUMBER: _ClassVar[int]
    chip_model: str
    cores: int
    max_destinations: int
    weight_min: int
    weight_max: int
    state_min: int
    state_max: int
    max_kernel: int
    strides: _containers.RepeatedScalarFieldContainer[int]
    max_padding: int
    pools: _containers.RepeatedScalarFieldContainer[int]
    max_channels: int
    max_input_size: int
    max_output_size: int
    kernel_memory: _containers.RepeatedScalarFieldContainer[int]
    neuron_memory: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, chip_model: _Optional[str] = ..., cores: _Optional[int] = ..., max_destinations: _Optional[int] = ..., weight_min: _Optional[int] = ..., weight_max: _Optional[int] = ..., state_min: _Optional[int] = ..., state_max: _Optional[int] = ..., max_kernel: _Optional[int] = ..., strides: _Optional[_Iterable[int]] = ..., max_padding: _Optional[int] = ..., pools: _Optional[_Iterable[int]] = ..., max_channels: _Optional[int] = ..., max_input_size: _Optional[int] = ..., max_output_size: _Optional[int] = ..., kernel_memory: _Optional[_Iterable[int]] = ..., neuron_memory: _Optional[_Iterable[int]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("backend", "chip_model", "server_version", "protocol_version", "limits", "backends_available", "max_message_bytes", "workers", "models_deployed", "queue_depth", "sessions_open", "device_busy")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CHIP_MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MODELS_DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_OPEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BUSY_FIELD_NUMBER: _ClassVar[int]
    backend: str
    chip_model: str
    server_version: str
    protocol_version: int
    limits: ChipLimits
    backends_available: _containers.RepeatedScalarFieldContainer[str]
    max_message_bytes: int
    workers: int
    models_deployed: int
    queue_depth: int
    sessions_open: int
    device_busy: bool
    def __init__(self, backend: _Optional[str] = ..., chip_model: _Optional[str] = ..., server_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., limits: _Optional[_Union[ChipLimits, _Mapping]] = ..., backends_available: _Optional[_Iterable[str]] = ..., max_message_bytes: _Optional[int] = ..., workers: _Optional[int] = ..., models_deployed: _Optional[int] = ..., queue_depth: _Optional[int] = ..., sessions_open: _Optional[int] = ..., device_busy: _Optional[bool] = ...) -> None: ...

class InputLayer(_message.Message):
    __slots__ = ("sensor_height", "sensor_width", "pool_y", "pool_x", "has_crop", "crop_y0", "crop_y1", "crop_x0", "crop_x1", "flip_x", "flip_y", "merge_polarities")
    SENSOR_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SENSOR_WIDTH_FIELD_NUMBER: _ClassVar[int]
    POOL_Y_FIELD_NUMBER: _ClassVar[int]
    POOL_X_FIELD_NUMBER: _ClassVar[int]
    HAS_CROP_FIELD_NUMBER: _ClassVar[int]
    CROP_Y0_FIELD_NUMBER: _ClassVar[int]
    CROP_Y1_FIELD_NUMBER: _ClassVar[int]
    CROP_X0_FIELD_NUMBER: _ClassVar[int]
    CROP_X1_FIELD_NUMBER: _ClassVar[int]
    FLIP_X_FIELD_NUMBER: _ClassVar[int]
    FLIP_Y_FIELD_NUMBER: _ClassVar[int]
    MERGE_POLARITIES_FIELD_NUMBER: _ClassVar[int]
    sensor_height: int
    sensor_width: int
    pool_y: int
    pool_x: int
    has_crop: bool
    crop_y0: int
    crop_y1: int
    crop_x0: int
    crop_x1: int
    flip_x: bool
    flip_y: bool
    merge_polarities: bool
    def __init__(self, sensor_height: _Optional[int] = ..., sensor_width: _Optional[int] = ..., pool_y: _Optional[int] = ..., pool_x: _Optional[int] = ..., has_crop: _Optional[bool] = ..., crop_y0: _Optional[int] = ..., crop_y1: _Optional[int] = ..., crop_x0: _Optional[int] = ..., crop_x1: _Optional[int] = ..., flip_x: _Optional[bool] = ..., flip_y: _Optional[bool] = ..., merge_polarities: _Optional[bool] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("name", "weights", "threshold_high", "threshold_low", "reset", "stride_y", "stride_x", "padding_y", "padding_x", "pool_y", "pool_x", "destinations", "leak", "leak_period_us")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_HIGH_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_LOW_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    STRIDE_Y_FIELD_NUMBER: _ClassVar[int]
    STRIDE_X_FIELD_NUMBER: _ClassVar[int]
    PADDING_Y_FIELD_NUMBER: _ClassVar[int]
    PADDING_X_FIELD_NUMBER: _ClassVar[int]
    POOL_Y_FIELD_NUMBER: _ClassVar[int]
    POOL_X_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    LEAK_FIELD_NUMBER: _ClassVar[int]
    LEAK_PERIOD_US_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights: Array
    threshold_high: int
    threshold_low: int
    reset: ResetMode
    stride_y: int
    stride_x: int
    padding_y: int
    padding_x: int
    pool_y: int
    pool_x: int
    destinations: _containers.RepeatedScalarFieldContainer[int]
    leak: Array
    leak_period_us: int
    def __init__(self, name: _Optional[str] = ..., weights: _Optional[_Union[Array, _Mapping]] = ..., threshold_high: _Optional[int] = ..., threshold_low: _Optional[int] = ..., reset: _Optional[_Union[ResetMode, str]] = ..., stride_y: _Optional[int] = ..., stride_x: _Optional[int] = ..., padding_y: _Optional[int] = ..., padding_x: _Optional[int] = ..., pool_y: _Optional[int] = ..., pool_x: _Optional[int] = ..., destinations: _Optional[_Iterable[int]] = ..., leak: _Optional[_Union[Array, _Mapping]] = ..., leak_period_us: _Optional[int] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("input", "layers", "monitor", "hop_latency_us")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    HOP_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    input: InputLayer
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    monitor: _containers.RepeatedScalarFieldContainer[int]
    hop_latency_us: int
    def __init__(self, input: _Optional[_Union[InputLayer, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., monitor: _Optional[_Iterable[int]] = ..., hop_latency_us: _Optional[int] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("model_id", "cores", "cached")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    cores: _containers.RepeatedScalarFieldContainer[int]
    cached: bool
    def __init__(self, model_id: _Optional[str] = ..., cores: _Optional[_Iterable[int]] = ..., cached: _Optional[bool] = ...) -> None: ...

class LayerUpdate(_message.Message):
    __slots__ = ("layer", "weights", "leak", "threshold_high", "threshold_low")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LEAK_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_HIGH_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_LOW_FIELD_NUMBER: _ClassVar[int]
    layer: int
    weights: Array
    leak: Array
    threshold_high: int
    threshold_low: int
    def __init__(self, layer: _Optional[int] = ..., weights: _Optional[_Union[Array, _Mapping]] = ..., leak: _Optional[_Union[Array, _Mapping]] = ..., threshold_high: _Optional[int] = ..., threshold_low: _Optional[int] = ...) -> None: ...

class UpdateWeightsRequest(_message.Message):
    __slots__ = ("model_id", "updates")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    updates: _containers.RepeatedCompositeFieldContainer[LayerUpdate]
    def __init__(self, model_id: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[LayerUpdate, _Mapping]]] = ...) -> None: ...

class UpdateWeightsResponse(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class Readout(_message.Message):
    __slots__ = ("t0_us", "bin_us", "num_bins", "membrane_layers", "spatial_counts", "mode")
    T0_US_FIELD_NUMBER: _ClassVar[int]
    BIN_US_FIELD_NUMBER: _ClassVar[int]
    NUM_BINS_FIELD_NUMBER: _ClassVar[int]
    MEMBRANE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    SPATIAL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    t0_us: int
    bin_us: int
    num_bins: int
    membrane_layers: _containers.RepeatedScalarFieldContainer[int]
    spatial_counts: bool
    mode: RunMode
    def __init__(self, t0_us: _Optional[int] = ..., bin_us: _Optional[int] = ..., num_bins: _Optional[int] = ..., membrane_layers: _Optional[_Iterable[int]] = ..., spatial_counts: _Optional[bool] = ..., mode: _Optional[_Union[RunMode, str]] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("model_id", "events", "offsets", "readout")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    READOUT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    events: Array
    offsets: Array
    readout: Readout
    def __init__(self, model_id: _Optional[str] = ..., events: _Optional[_Union[Array, _Mapping]] = ..., offsets: _Optional[_Union[Array, _Mapping]] = ..., readout: _Optional[_Union[Readout, _Mapping]] = ...) -> None: ...

class LayerArray(_message.Message):
    __slots__ = ("layer", "values")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    layer: int
    values: Array
    def __init__(self, layer: _Optional[int] = ..., values: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("model_id", "output_events", "output_offsets", "counts", "membranes", "counters", "compute_seconds")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    MEMBRANES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    output_events: Array
    output_offsets: Array
    counts: _containers.RepeatedCompositeFieldContainer[LayerArray]
    membranes: _containers.RepeatedCompositeFieldContainer[LayerArray]
    counters: Array
    compute_seconds: float
    def __init__(self, model_id: _Optional[str] = ..., output_events: _Optional[_Union[Array, _Mapping]] = ..., output_offsets: _Optional[_Union[Array, _Mapping]] = ..., counts: _Optional[_Iterable[_Union[LayerArray, _Mapping]]] = ..., membranes: _Optional[_Iterable[_Union[LayerArray, _Mapping]]] = ..., counters: _Optional[_Union[Array, _Mapping]] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("open", "events")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    open: StreamOpen
    events: Array
    def __init__(self, open: _Optional[_Union[StreamOpen, _Mapping]] = ..., events: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("model_id", "readout", "paged")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    READOUT_FIELD_NUMBER: _ClassVar[int]
    PAGED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    readout: Readout
    paged: bool
    def __init__(self, model_id: _Optional[str] = ..., readout: _Optional[_Union[Readout, _Mapping]] = ..., paged: _Optional[bool] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("session_id", "output_events", "events_in", "more")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_IN_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    output_events: Array
    events_in: int
    more: bool
    def __init__(self, session_id: _Optional[str] = ..., output_events: _Optional[_Union[Array, _Mapping]] = ..., events_in: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("session_id", "layers", "from_event", "from_oldest")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FROM_EVENT_FIELD_NUMBER: _ClassVar[int]
    FROM_OLDEST_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    from_event: int
    from_oldest: bool
    def __init__(self, session_id: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., from_event: _Optional[int] = ..., from_oldest: _Optional[bool] = ...) -> None: ...

class ReadOutputsResponse(_message.Message):
    __slots__ = ("output_events", "counts", "counters", "total_events", "resets", "first_event")
    OUTPUT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESETS_FIELD_NUMBER: _ClassVar[int]
    FIRST_EVENT_FIELD_NUMBER: _ClassVar[int]
    output_events: Array
    counts: _containers.RepeatedCompositeFieldContainer[LayerArray]
    counters: Array
    total_events: int
    resets: int
    first_event: int
    def __init__(self, output_events: _Optional[_Union[Array, _Mapping]] = ..., counts: _Optional[_Iterable[_Union[LayerArray, _Mapping]]] = ..., counters: _Optional[_Union[Array, _Mapping]] = ..., total_events: _Optional[int] = ..., resets: _Optional[int] = ..., first_event: _Optional[int] = ...) -> None: ...

class ReadMembranesResponse(_message.Message):
    __slots__ = ("membranes",)
    MEMBRANES_FIELD_NUMBER: _ClassVar[int]
    membranes: _containers.RepeatedCompositeFieldContainer[LayerArray]
    def __init__(self, membranes: _Optional[_Iterable[_Union[LayerArray, _Mapping]]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
