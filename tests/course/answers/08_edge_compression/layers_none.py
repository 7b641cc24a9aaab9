def my_fp32_layers(matmuls):
    return []   # int8 everywhere: the smallest and fastest
