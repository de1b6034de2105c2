"""Train one network to read films as a trained model (usually an ensemble) reads them.

The teacher reads the very same augmented view the student is trained on ("consistent"
distillation): both hang off the student's augmentation layers in one graph, and the model
being fitted outputs both readings side by side. The teacher is frozen and runs in
inference mode, so only the student learns.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

from mlcore.serialization import MODEL_FILE


def load_teacher(model_dir: Path) -> keras.Model:
    """The teacher's network from its rescaled (0-1) input on, frozen."""
    model = keras.models.load_model(Path(model_dir) / MODEL_FILE)
    (reading,) = model.outputs
    network = keras.Model(_view(model), reading, name="teacher")
    network.trainable = False
    return network


def with_teacher(student: keras.Model, teacher: keras.Model) -> keras.Model:
    """A model whose output is (student's P(pneumonia), teacher's) for the same augmented view.

    Shares the student's layers, so fitting it trains `student` itself.
    """
    if student.input_shape != (None, *teacher.input_shape[1:]):
        raise ValueError(
            f"the student takes {student.input_shape}, the teacher {teacher.input_shape}"
        )
    teacher_reading = InferenceOnly(teacher, name="teacher_reading")(_view(student))
    both = layers.Concatenate(name="student_and_teacher")([student.output, teacher_reading])
    return keras.Model(student.input, both, name=f"{student.name}_with_teacher")


def distillation_loss(teacher_weight: float, label_smoothing: float):
    """Cross-entropy of the student against the teacher's reading, mixed with the label's.

    `teacher_weight` 1.0 learns the teacher's reading alone; 0.0 is plain training.
    """
    check_teacher_weight(teacher_weight)

    def loss(labels, readings):
        student, teacher = readings[:, :1], readings[:, 1:]
        labels = ops.reshape(ops.cast(labels, student.dtype), (-1, 1))
        from_label = keras.losses.binary_crossentropy(
            labels, student, label_smoothing=label_smoothing
        )
        from_teacher = keras.losses.binary_crossentropy(teacher, student)
        return (1.0 - teacher_weight) * from_label + teacher_weight * from_teacher

    return loss


def check_teacher_weight(teacher_weight: float) -> None:
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher weight must be between 0 and 1, not {teacher_weight}")


class InferenceOnly(keras.layers.Layer):
    """Runs a network in inference mode (no dropout, stored batch statistics), always.

    Within a model being fitted, Keras passes `training=True` to every layer of the graph,
    overriding a `training=False` given when the graph was built, and drops it only for
    layers whose call does not take it. This layer's call does not, so the network it
    wraps keeps the `training=False` given here.
    """

    def __init__(self, network: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.network = network

    def call(self, inputs):
        return self.network(inputs, training=False)


class StudentAUC(keras.metrics.AUC):
    """AUC of the student's reading (the first column) against the labels."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred[:, :1], sample_weight)


def _view(model: keras.Model):
    """The film as the network proper sees it: rescaled to 0-1, and augmented in training."""
    names = {layer.name for layer in model.layers}
    return model.get_layer("augment" if "augment" in names else "rescale").output
