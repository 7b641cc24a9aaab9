def my_fp32_layers(matmuls):
    return list(matmuls)  # no damage at all
