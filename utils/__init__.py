"""MMGR utils package."""

import warnings

# PyG's import calls the deprecated torch.jit.script on current torch; the warning is not ours to fix
# and only confuses users of the command-line scripts.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
