"""Keras model functions for the multibase addition task, in the Talos form.

Each model function takes ``(x_train, y_train, x_val, y_val, params)``, trains once with a plain
``keras.Model.fit`` call and returns ``(history, model)``. ``x`` is the dict made by
:func:`~orchestrator.tasks.multibase_addition.data.load_data` or a ``[text, bases]`` list.

The returned model always has exactly the inputs ``text`` and ``bases`` and outputs
``(n, sum_len, 11)`` probabilities, so ``model.predict({"text": ..., "bases": ...})`` and
:func:`predict_sums` work the same for every architecture.

``params`` keys:

* ``lr``: learning rate.
* ``layer_1_text_input_neuron``: units of the LSTM reading the expression.
* ``layer_1_base_input_neuron``: units of the dense layer reading the base.
* ``concatenated_layer_neuron``: units of the layers after the two encodings are merged,
  including the decoding LSTM.
* ``epochs``, ``batch``: passed to ``fit`` as ``epochs`` and ``batch_size``.
* ``optimizer`` (optional, default ``"adam"``): a Keras optimizer name or class; it is created
  with ``learning_rate=lr``.
* ``mask_padding`` (optional, default ``True``): skip the all-zero padding rows of ``text``
  in the encoder, so its final state is the one after the last real character.
* ``base_to_encoder`` (optional, default ``False``): also feed the base one-hot to the text
  encoder with every character, so it knows the base while it reads the digits instead of
  learning it only after the last one.
* ``clipnorm`` (optional, default none): clip each gradient to this norm, which keeps a large
  learning rate from blowing up the LSTMs.
* ``lr_patience`` (optional, default none): halve the learning rate (or multiply it by
  ``lr_factor``, default 0.5) whenever ``val_loss`` has not improved for this many epochs, down
  to ``lr_min`` (default 0).
* ``architecture``: used by :func:`build_and_fit` only, ``"repeat_vector"`` or
  ``"encoder_decoder"``.

Every model function reports ``val_exact`` in the history at each epoch: the fraction of
validation sums the returned model gets right in every character.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops
from keras.callbacks import History

from orchestrator.tasks.multibase_addition.data import (
    SUM_VOCAB_SIZE,
    character_accuracy,
    decode_sum,
    encode_queries,
    exact_match,
    query_options,
)

logger = logging.getLogger(__name__)

DECODER_VOCAB_SIZE = SUM_VOCAB_SIZE + 1
"""Symbols the encoder-decoder's decoder reads: the 11 sum symbols and a start token."""

START_INDEX = SUM_VOCAB_SIZE
"""Index of the start token in the decoder's one-hot input."""

ARCHITECTURES = ("repeat_vector", "encoder_decoder")

_REQUIRED_PARAMS = (
    "lr",
    "layer_1_text_input_neuron",
    "layer_1_base_input_neuron",
    "concatenated_layer_neuron",
    "epochs",
    "batch",
)

#: Every parameter the model functions read; a sweep naming another is refused before it runs
#: (see :func:`orchestrator.sweep.imports.check_param_name`), so a misspelt `clip_norm` is not
#: silently left at its default.
PARAMETERS = (
    "architecture",
    *_REQUIRED_PARAMS,
    "optimizer",
    "mask_padding",
    "base_to_encoder",
    "clipnorm",
    "lr_patience",
    "lr_factor",
    "lr_min",
)

# One predict call over the whole validation set is far cheaper than many small ones.
_PREDICT_BATCH_SIZE = 4096

ModelInputs = Mapping[str, np.ndarray] | Sequence[np.ndarray]


@keras.saving.register_keras_serializable(package="orchestrator")
class StartToken(layers.Layer):
    """Emit the one-hot start symbol as one decoder step per sample: ``(batch, 1, vocab_size)``.

    The input only gives the batch size; its values are ignored.
    """

    def __init__(self, vocab_size: int, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.index = index

    def call(self, inputs: Any) -> Any:
        token = ops.one_hot(
            ops.convert_to_tensor([[self.index]]), self.vocab_size, dtype=self.compute_dtype
        )
        return ops.broadcast_to(token, (ops.shape(inputs)[0], 1, self.vocab_size))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], 1, self.vocab_size)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocab_size": self.vocab_size, "index": self.index}


@keras.saving.register_keras_serializable(package="orchestrator")
class GreedyToken(layers.Layer):
    """Turn probabilities ``(..., k)`` into the one-hot ``(..., vocab_size)`` of their argmax.

    With ``vocab_size > k`` the extra symbols (the start token) are never chosen.
    """

    def __init__(self, vocab_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size

    def call(self, inputs: Any) -> Any:
        return ops.one_hot(ops.argmax(inputs, axis=-1), self.vocab_size, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.vocab_size)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocab_size": self.vocab_size}


@keras.saving.register_keras_serializable(package="orchestrator")
class BaseBesideCharacters(layers.Layer):
    """Append the base one-hot to every character of ``text``, leaving padding rows all zero.

    Inputs ``[text (batch, steps, k), bases (batch, b)]``; output ``(batch, steps, k + b)``.
    Padding rows stay zero so that masking still skips them.
    """

    def call(self, inputs: Any) -> Any:
        text, bases = inputs
        is_character = ops.max(text, axis=-1, keepdims=True)
        return ops.concatenate([text, is_character * ops.expand_dims(bases, axis=1)], axis=-1)

    def compute_output_shape(
        self, input_shape: list[tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        text_shape, bases_shape = input_shape
        return (*text_shape[:-1], _width(text_shape) + _width(bases_shape))


def _width(shape: tuple[int | None, ...]) -> int:
    if shape[-1] is None:
        raise ValueError("BaseBesideCharacters needs inputs with a known last dimension")
    return shape[-1]


class ExactMatch(keras.callbacks.Callback):
    """Score the returned model on the validation rows at each epoch end.

    Writes ``logs["val_exact"]``, the fraction of sums right in every character, and, when
    ``predictor`` is not the model being trained, overwrites ``logs["val_acc"]`` with the
    per-character accuracy of the predictor's own (greedy) decoding; the teacher-forced figure
    Keras computed is kept as ``val_acc_teacher_forced``. Both architectures are then ranked on
    what they do at inference, not on what teacher forcing lets them do.

    Args:
        predictor: The model whose predictions count, which may differ from the model being
            trained (the greedy decoder of :func:`encoder_decoder`).
        x_val: Validation inputs of ``predictor``.
        y_val: One-hot validation sums.
    """

    def __init__(
        self,
        predictor: keras.Model,
        x_val: Mapping[str, np.ndarray],
        y_val: np.ndarray,
    ) -> None:
        super().__init__()
        self.predictor = predictor
        self.x_val = x_val
        self.y_val = y_val

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        predicted = self.predictor.predict(
            self.x_val, batch_size=min(len(self.y_val), _PREDICT_BATCH_SIZE), verbose=0
        )
        if logs is None:
            return
        logs["val_exact"] = exact_match(self.y_val, predicted)
        if self.predictor is not self.model:
            if "val_acc" in logs:
                logs["val_acc_teacher_forced"] = logs["val_acc"]
            logs["val_acc"] = character_accuracy(self.y_val, predicted)


@dataclass(frozen=True)
class _Hyperparameters:
    lr: float
    text_units: int
    base_units: int
    merged_units: int
    epochs: int
    batch: int
    optimizer: str | Callable[..., keras.optimizers.Optimizer]
    mask_padding: bool
    base_to_encoder: bool
    clipnorm: float | None
    lr_patience: int | None
    lr_factor: float
    lr_min: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> _Hyperparameters:
        missing = [key for key in _REQUIRED_PARAMS if key not in params]
        if missing:
            raise ValueError(
                f"params: missing {', '.join(missing)}; required: {', '.join(_REQUIRED_PARAMS)}"
            )
        return cls(
            lr=float(params["lr"]),
            text_units=int(params["layer_1_text_input_neuron"]),
            base_units=int(params["layer_1_base_input_neuron"]),
            merged_units=int(params["concatenated_layer_neuron"]),
            epochs=int(params["epochs"]),
            batch=int(params["batch"]),
            optimizer=params.get("optimizer", "adam"),
            mask_padding=bool(params.get("mask_padding", True)),
            base_to_encoder=bool(params.get("base_to_encoder", False)),
            clipnorm=_optional(params, "clipnorm", float),
            lr_patience=_optional(params, "lr_patience", int),
            lr_factor=float(params.get("lr_factor", 0.5)),
            lr_min=float(params.get("lr_min", 0.0)),
        )

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        config: dict[str, Any] = {"learning_rate": self.lr}
        if self.clipnorm is not None:
            config["clipnorm"] = self.clipnorm
        if isinstance(self.optimizer, str):
            return keras.optimizers.get({"class_name": self.optimizer, "config": config})
        if callable(self.optimizer):
            # Talos passes optimizer classes; a fresh instance per trial keeps trials independent.
            return self.optimizer(**config)
        raise ValueError(
            f"params['optimizer']: got {self.optimizer!r}; accepted: a Keras optimizer name "
            "such as 'adam' or an optimizer class"
        )

    def training_callbacks(
        self, scorer: ExactMatch, extra: Sequence[keras.callbacks.Callback]
    ) -> list[keras.callbacks.Callback]:
        """The callbacks of ``fit``: val_exact first, so the others can read it in the logs."""
        callbacks: list[keras.callbacks.Callback] = [scorer]
        if self.lr_patience is not None:
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss",
                    factor=self.lr_factor,
                    patience=self.lr_patience,
                    min_lr=self.lr_min,
                )
            )
        return [*callbacks, *extra]


def repeat_vector(
    x_train: ModelInputs,
    y_train: np.ndarray,
    x_val: ModelInputs,
    y_val: np.ndarray,
    params: Mapping[str, Any],
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[History, keras.Model]:
    """Train the repeat-vector model: both encodings merged, repeated once per output character.

    An LSTM reads the expression and a dense layer the base; their concatenation goes through a
    dense layer, is repeated ``sum_len`` times and decoded by an LSTM with a softmax per step.

    Args:
        x_train: Training inputs, a ``{"text", "bases"}`` dict or a ``[text, bases]`` list.
        y_train: One-hot training sums ``(n, sum_len, 11)``.
        x_val: Validation inputs, like ``x_train``.
        y_val: One-hot validation sums.
        params: Hyperparameters, see the module docstring.
        callbacks: More Keras callbacks for ``fit``; they run after the one that writes
            ``val_exact`` into the logs, so they can read it (to stop on a time budget, say).

    Returns:
        ``(history, model)``; ``history.history`` holds ``loss``, ``acc`` (per character),
        ``val_loss``, ``val_acc`` and ``val_exact`` per epoch.

    Raises:
        ValueError: If a required parameter is missing or the inputs are malformed.
    """
    hp = _Hyperparameters.from_params(params)
    x_train, x_val = _as_input_dict(x_train, "x_train"), _as_input_dict(x_val, "x_val")
    text, bases = _input_layers(x_train)

    merged = _merge_encodings(
        layers.LSTM(hp.text_units, name="text_encoder")(_encoder_inputs(text, bases, hp)),
        layers.Dense(hp.base_units, activation="relu", name="base_encoder")(bases),
        hp,
    )
    repeated = layers.RepeatVector(y_train.shape[1], name="repeat")(merged)
    decoded = layers.LSTM(hp.merged_units, return_sequences=True, name="decoder")(repeated)
    outputs = layers.TimeDistributed(
        layers.Dense(SUM_VOCAB_SIZE, activation="softmax"), name="sum"
    )(decoded)
    model = keras.Model([text, bases], outputs, name="repeat_vector")
    _compile(model, hp.make_optimizer())

    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=hp.epochs,
        batch_size=hp.batch,
        callbacks=hp.training_callbacks(ExactMatch(model, x_val, y_val), callbacks),
        verbose=0,
    )
    return history, model


def encoder_decoder(
    x_train: ModelInputs,
    y_train: np.ndarray,
    x_val: ModelInputs,
    y_val: np.ndarray,
    params: Mapping[str, Any],
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[History, keras.Model]:
    """Train a sequence-to-sequence model with teacher forcing; return its greedy decoder.

    An LSTM encodes the expression; the base, through a dense layer, is merged into the
    encoder's final ``h`` and ``c`` to give the decoder's initial state. The decoder LSTM reads
    the previous sum character (a start token first) and a softmax predicts the next one.

    Training feeds the true previous characters (teacher forcing), built here from ``y_train``
    and ``y_val``. The returned model shares the trained layers but feeds back its own most
    likely character at each step, so it needs only ``text`` and ``bases``.

    Args:
        x_train: Training inputs, a ``{"text", "bases"}`` dict or a ``[text, bases]`` list.
        y_train: One-hot training sums ``(n, sum_len, 11)``.
        x_val: Validation inputs, like ``x_train``.
        y_val: One-hot validation sums.
        params: Hyperparameters, see the module docstring.
        callbacks: More Keras callbacks for ``fit``; they run after the one that writes
            ``val_exact`` into the logs, so they can read it (to stop on a time budget, say).

    Returns:
        ``(history, model)`` where ``model`` is the greedy decoder. ``acc`` and ``val_acc`` in
        the history are per character under teacher forcing, so they overstate what the greedy
        decoder does; ``val_exact`` is measured with the greedy decoder.

    Raises:
        ValueError: If a required parameter is missing or the inputs are malformed.

    .. note::
        Saving the returned model to ``.keras`` works as usual; loading it back needs this
        module imported first, which registers the :class:`StartToken` and
        :class:`GreedyToken` layers.
    """
    hp = _Hyperparameters.from_params(params)
    x_train, x_val = _as_input_dict(x_train, "x_train"), _as_input_dict(x_val, "x_val")
    sum_len = y_train.shape[1]
    text, bases = _input_layers(x_train)

    _, text_h, text_c = layers.LSTM(hp.text_units, return_state=True, name="text_encoder")(
        _encoder_inputs(text, bases, hp)
    )
    base_code = layers.Dense(hp.base_units, activation="relu", name="base_encoder")(bases)
    initial_state = [
        _merge_encodings(text_h, base_code, hp, activation="tanh", name="decoder_h0"),
        _merge_encodings(text_c, base_code, hp, activation="tanh", name="decoder_c0"),
    ]
    decoder = layers.LSTM(
        hp.merged_units, return_sequences=True, return_state=True, name="decoder"
    )
    readout = layers.Dense(SUM_VOCAB_SIZE, activation="softmax", name="readout")

    previous = keras.Input((sum_len, DECODER_VOCAB_SIZE), name="previous_characters")
    forced, _, _ = decoder(previous, initial_state=initial_state)
    trainer = keras.Model(
        [text, bases, previous], readout(forced), name="encoder_decoder_teacher_forced"
    )
    _compile(trainer, hp.make_optimizer())

    predictor = _greedy_decoder(text, bases, initial_state, decoder, readout, sum_len)
    # Compiled only so that evaluate() works on the returned model; it is never trained itself.
    # Its optimizer is built now so a saved model has the variables loading expects.
    _compile(predictor, "adam")
    predictor.optimizer.build(predictor.trainable_variables)

    history = trainer.fit(
        {**x_train, "previous_characters": teacher_forcing_inputs(y_train)},
        y_train,
        validation_data=({**x_val, "previous_characters": teacher_forcing_inputs(y_val)}, y_val),
        epochs=hp.epochs,
        batch_size=hp.batch,
        callbacks=hp.training_callbacks(ExactMatch(predictor, x_val, y_val), callbacks),
        verbose=0,
    )
    return history, predictor


def build_and_fit(
    x_train: ModelInputs,
    y_train: np.ndarray,
    x_val: ModelInputs,
    y_val: np.ndarray,
    params: Mapping[str, Any],
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[History, keras.Model]:
    """Train the architecture named by ``params["architecture"]``, so one sweep compares both.

    Args:
        callbacks: Passed on to the model function.

    Returns:
        What :func:`repeat_vector` or :func:`encoder_decoder` returns.

    Raises:
        ValueError: If ``params["architecture"]`` is missing or not one of
            ``"repeat_vector"``, ``"encoder_decoder"``.
    """
    architecture = params.get("architecture")
    model_functions = {"repeat_vector": repeat_vector, "encoder_decoder": encoder_decoder}
    if architecture not in model_functions:
        raise ValueError(
            f"params['architecture']: got {architecture!r}; accepted: {', '.join(ARCHITECTURES)}"
        )
    return model_functions[architecture](
        x_train, y_train, x_val, y_val, params, callbacks=callbacks
    )


for _function in (repeat_vector, encoder_decoder, build_and_fit):
    _function.accepted_params = PARAMETERS  # type: ignore[attr-defined]


def predict_sums(
    model: keras.Model,
    expressions: Sequence[str],
    bases: Sequence[str | int] | str | int,
    /,
    **data_options: Any,
) -> list[str]:
    """Predict the decimal sums of expressions with a trained model.

    Args:
        model: A model returned by a model function of this module.
        expressions: Expressions such as ``'10+1000'``.
        bases: The base of each expression, or one base for all.
        **data_options: The :func:`~orchestrator.tasks.multibase_addition.data.load_data`
            keyword arguments the model was trained with (``max_operand``, ``terms``,
            ``bases``, ``reverse_text``, ``reverse_sum``; sampling options are ignored), so the
            same dict can be passed to both.

    Returns:
        The predicted sums as decimal strings, trailing pad stripped.

    Raises:
        ValueError: If an expression cannot be encoded for these data options.
    """
    inputs = encode_queries(expressions, bases, **query_options(data_options))
    probabilities = model.predict(inputs, batch_size=_PREDICT_BATCH_SIZE, verbose=0)
    return decode_sum(probabilities, reverse_sum=bool(data_options.get("reverse_sum", False)))


def teacher_forcing_inputs(y: np.ndarray) -> np.ndarray:
    """Decoder inputs for teacher forcing: the start token, then the sum shifted right by one.

    Args:
        y: One-hot sums ``(n, sum_len, 11)``.

    Returns:
        float32 one-hot array ``(n, sum_len, 12)``; symbol 11 is the start token.
    """
    previous = np.zeros((*y.shape[:2], DECODER_VOCAB_SIZE), dtype=np.float32)
    previous[:, 0, START_INDEX] = 1.0
    previous[:, 1:, :SUM_VOCAB_SIZE] = y[:, :-1]
    return previous


def _greedy_decoder(
    text: keras.KerasTensor,
    bases: keras.KerasTensor,
    initial_state: list[keras.KerasTensor],
    decoder: layers.LSTM,
    readout: layers.Dense,
    sum_len: int,
) -> keras.Model:
    """Unroll the trained decoder ``sum_len`` steps, each reading the previous step's argmax."""
    token = StartToken(DECODER_VOCAB_SIZE, START_INDEX, name="start_token")(bases)
    state = initial_state
    steps = []
    for step in range(sum_len):
        output, h, c = decoder(token, initial_state=state)
        probabilities = readout(output)
        steps.append(probabilities)
        if step < sum_len - 1:
            token = GreedyToken(DECODER_VOCAB_SIZE, name=f"greedy_token_{step}")(probabilities)
            state = [h, c]
    outputs = steps[0] if sum_len == 1 else layers.Concatenate(axis=1, name="sum")(steps)
    return keras.Model([text, bases], outputs, name="encoder_decoder")


def _optional(params: Mapping[str, Any], key: str, kind: Callable[[Any], Any]) -> Any:
    value = params.get(key)
    return None if value is None else kind(value)


def _as_input_dict(x: ModelInputs, name: str) -> dict[str, np.ndarray]:
    """Accept ``{"text", "bases"}`` or ``[text, bases]`` and return the dict form."""
    if isinstance(x, Mapping):
        missing = {"text", "bases"} - set(x)
        if missing:
            raise ValueError(
                f"{name}: missing {', '.join(sorted(missing))}; expected keys text, bases"
            )
        text, bases = x["text"], x["bases"]
    elif isinstance(x, Sequence) and len(x) == 2:
        text, bases = x
    else:
        raise ValueError(f"{name}: expected a dict with keys text, bases or a [text, bases] list")
    return {
        "text": np.asarray(text, dtype=np.float32),
        "bases": np.asarray(bases, dtype=np.float32),
    }


def _input_layers(x: Mapping[str, np.ndarray]) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    return (
        keras.Input(x["text"].shape[1:], name="text"),
        keras.Input(x["bases"].shape[1:], name="bases"),
    )


def _encoder_inputs(
    text: keras.KerasTensor, bases: keras.KerasTensor, hp: _Hyperparameters
) -> keras.KerasTensor:
    """The text, padding masked if asked, with the base beside every character if asked."""
    steps = (
        BaseBesideCharacters(name="text_and_base")([text, bases]) if hp.base_to_encoder else text
    )
    return layers.Masking(mask_value=0.0, name="padding_mask")(steps) if hp.mask_padding else steps


def _merge_encodings(
    text_code: keras.KerasTensor,
    base_code: keras.KerasTensor,
    hp: _Hyperparameters,
    activation: str = "relu",
    name: str = "merged",
) -> keras.KerasTensor:
    joined = layers.Concatenate(name=f"{name}_inputs")([text_code, base_code])
    return layers.Dense(hp.merged_units, activation=activation, name=name)(joined)


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer | str) -> None:
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["acc"])
