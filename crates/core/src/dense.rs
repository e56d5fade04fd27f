//! A dense layer's weights, as checkpoints and heads hold them.

/// A dense layer, `y = x Wᵀ + b`, weight stored row-major `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Inputs.
    pub inputs: usize,
    /// Outputs.
    pub outputs: usize,
    /// `[outputs * inputs]`, row-major `[out, in]`.
    pub weight: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
}

impl Dense {
    /// Parameters (weights and biases).
    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.len()
    }
}
