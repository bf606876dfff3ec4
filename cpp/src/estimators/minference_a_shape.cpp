// MInference A-shape parameters (see the header): the pattern is fixed, the window kernel runs it.
#include "spattn/estimators/minference_a_shape.hpp"

namespace spattn {

void MInferenceAShapeParams::validate() const {
  require_min("minference_a_shape", "n_init", n_init, 0);
  require_min("minference_a_shape", "n_local", n_local, 1);
}

}  // namespace spattn
