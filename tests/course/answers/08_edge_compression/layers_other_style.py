import re


def my_fp32_layers(matmuls):
    # the feed-forward down projections everywhere, and all of the first layer
    down = re.compile(r"layer\.\d+\.output\.dense/")
    return sorted({m for m in matmuls if down.search(m) or ".layer.0." in m})
