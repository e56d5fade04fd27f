"""The Keras tutorial's code, verbatim, except for where CIFAR-10 comes from.

`cifar10.load_data()` downloads; here the same arrays are read from the official binary
release in $CIFAR10_DIR (cifar-10-batches-bin) and laid out as Keras returns them
(N, 32, 32, 3), uint8. Everything else -- model, freezing, optimizer, fit, evaluate -- is
the tutorial's. Prints one JSON line per depth. Used to check the tutorial's run-to-run
variation against layerwise (docs/results/README.md).

    pip install tensorflow-cpu
    CIFAR10_DIR=../shared/data/cifar-10-batches-bin python docs/results/keras/tutorial.py
"""
import json
import os
import time

import numpy as np
import tensorflow
from tensorflow.keras.models import Sequential
from tensorflow.keras.layers import Dense, Flatten


def load_cifar10_binary(folder):
    def read(name):
        raw = np.fromfile(os.path.join(folder, name), dtype=np.uint8).reshape(-1, 3073)
        images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC, as Keras
        return images, raw[:, 0:1].astype(np.int64)
    train = [read(f"data_batch_{i}.bin") for i in range(1, 6)]
    x_train = np.concatenate([t[0] for t in train])
    y_train = np.concatenate([t[1] for t in train])
    x_test, y_test = read("test_batch.bin")
    return (x_train, y_train), (x_test, y_test)


def get_global_configuration():
    num_layers_to_add = 10
    return num_layers_to_add


def get_model_configuration():
    img_width, img_height = 32, 32
    no_classes = 10
    batch_size = 250
    no_epochs = 25
    validation_split = 0.2
    verbosity = 0
    return img_width, img_height, no_classes, batch_size, no_epochs, validation_split, verbosity


def get_dataset():
    img_width, img_height, no_classes, _, _, _, _ = get_model_configuration()
    (input_train, target_train), (input_test, target_test) = load_cifar10_binary(os.environ["CIFAR10_DIR"])
    input_train = input_train.reshape(input_train.shape[0], img_width, img_height, 3)
    input_test = input_test.reshape(input_test.shape[0], img_width, img_height, 3)
    input_train = input_train.astype('float32')
    input_test = input_test.astype('float32')
    input_train = input_train / 255
    input_test = input_test / 255
    target_train = tensorflow.keras.utils.to_categorical(target_train, no_classes)
    target_test = tensorflow.keras.utils.to_categorical(target_test, no_classes)
    return input_train, input_test, target_train, target_test


def create_base_model():
    _, _, no_classes, _, _, _, _ = get_model_configuration()
    model = Sequential()
    model.add(Flatten())
    model.add(Dense(256, activation='relu'))
    model.add(Dense(no_classes, activation='softmax'))
    return model


def add_extra_layer(model):
    layer_to_add = Dense(256, activation='relu')
    output_layer = model.layers[-1]
    for layer in model.layers:
        layer.trainable = False
    model.pop()
    model.add(layer_to_add)
    model.add(output_layer)
    return model


DEPTH = [0]


def train_model(model, data):
    _, _, _, batch_size, no_epochs, validation_split, verbosity = get_model_configuration()
    input_train, input_test, target_train, target_test = data
    model.compile(loss=tensorflow.keras.losses.categorical_crossentropy,
                  optimizer=tensorflow.keras.optimizers.Adam(),
                  metrics=['accuracy'])
    start = time.time()
    history = model.fit(input_train, target_train,
                        batch_size=batch_size,
                        epochs=no_epochs,
                        verbose=verbosity,
                        validation_split=validation_split)
    score = model.evaluate(input_test, target_test, verbose=0)
    DEPTH[0] += 1
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    print(json.dumps({"depth": DEPTH[0], "test_loss": score[0], "test_accuracy": score[1],
                      "val_loss": history.history["val_loss"][-1], "val_accuracy": history.history["val_accuracy"][-1],
                      "trainable_params": trainable, "seconds": time.time() - start}), flush=True)
    return model


def training_process():
    model = create_base_model()
    data = get_dataset()
    num_layers_to_add = get_global_configuration()
    for i in range(num_layers_to_add):
        model = train_model(model, data)
        model = add_extra_layer(model)


if __name__ == "__main__":
    training_process()
