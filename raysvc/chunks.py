"""How many rows large-pool code touches at once, so no whole-pool temporary is ever made.

At ImageNet size a pool's probabilities (1.28M x 1000 float32) are 5.1 GB and its
class-guided features 5.2 GB; the code that reads them walks row blocks of these sizes.
"""

# a computation's row block: (rows x C) probabilities, (rows x 2D) guided features or a
# block's distances to centres, with their float32 temporaries, stay ~50 MB at D = 384
COMPUTE_ROWS = 16_384
# a conversion's row block (a float16 -> float32 copy or a gather of D-wide rows, a mean
# over rows): ~100 MB at D = 384
COPY_ROWS = 65_536
