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

from mlcore.serialization import MODEL_FILE, ModelMetadata


def load_teacher(model_dir: Path) -> tuple[keras.Model, ModelMetadata]:
    """The teacher's network from its rescaled (0-1) input on, frozen, and its metadata."""
    model = keras.models.load_model(Path(model_dir) / MODEL_FILE)
    start = model.get_layer("augment") if "augment" in _layer_names(model) else None
    start = start or model.get_layer("rescale")
    (reading,) = model.outputs
    network = keras.Model(start.output, reading, name="teacher")
    network.trainable = False
    return network, ModelMetadata.read(model_dir)


def with_teacher(student: keras.Model, teacher: keras.Model) -> keras.Model:
    """A model whose output is (student's P(pneumonia), teacher's) for the same augmented view.

    Shares the student's layers, so fitting it trains `student` itself.
    """
    if student.input_shape != (None, *teacher.input_shape[1:]):
        raise ValueError(
            f"the student takes {student.input_shape}, the teacher {teacher.input_shape}"
        )
    view = student.get_layer("augment").output
    teacher_reading = teacher(view, training=False)  # no dropout, frozen batch statistics
    both = layers.Concatenate(name="student_and_teacher")([student.output, teacher_reading])
    return keras.Model(student.input, both, name=f"{student.name}_with_teacher")


def distillation_loss(teacher_weight: float = 1.0, label_smoothing: float = 0.05):
    """Cross-entropy of the student against the teacher's reading, mixed with the label's.

    `teacher_weight` 1.0 learns the teacher's reading alone; 0.0 is plain training.
    """
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher_weight must be between 0 and 1, not {teacher_weight}")

    def loss(labels, readings):
        student, teacher = readings[:, :1], readings[:, 1:]
        labels = ops.reshape(ops.cast(labels, student.dtype), (-1, 1))
        from_label = keras.losses.binary_crossentropy(
            labels, student, label_smoothing=label_smoothing
        )
        from_teacher = keras.losses.binary_crossentropy(teacher, student)
        return (1.0 - teacher_weight) * from_label + teacher_weight * from_teacher

    return loss


class StudentAUC(keras.metrics.AUC):
    """AUC of the student's reading (the first column) against the labels."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred[:, :1], sample_weight)


def _layer_names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers}
