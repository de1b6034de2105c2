"""Model code for pneumosite: data, preprocessing, the CNN, training, evaluation and serving.

Plain Python + Keras 3; nothing here imports Django.
"""
