//! Every checkpoint tensor's name, made here and nowhere else. A [`TensorPath`] names a
//! layer or block (`hidden.{i}`, `decoder.{i}`, `head`, `stages.{i}`, `head.convs.{j}`,
//! `head.linear`) and makes the names of its tensors (`.weight`, `.bias`,
//! `.conv.weight`, `.bn.running_mean`, ...): PyTorch's names, which the checkpoint
//! contract (ARCHITECTURE.md) fixes.

use std::fmt;

/// The dotted path of a layer, a block or a part of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorPath(String);

impl TensorPath {
    /// An MLP's hidden layer `i` (0-based): `hidden.{i}`.
    pub fn hidden(i: usize) -> Self {
        Self(format!("hidden.{i}"))
    }

    /// The decoder of the autoencoder layer `i`: `decoder.{i}`.
    pub fn decoder(i: usize) -> Self {
        Self(format!("decoder.{i}"))
    }

    /// An MLP's output layer, or a convolutional network's auxiliary head: `head`.
    pub fn head() -> Self {
        Self("head".into())
    }

    /// A convolutional network's stage `i` (0-based): `stages.{i}`.
    pub fn stage(i: usize) -> Self {
        Self(format!("stages.{i}"))
    }

    /// The head's conv block `j`: `head.convs.{j}`.
    pub fn head_conv(j: usize) -> Self {
        Self(format!("head.convs.{j}"))
    }

    /// The head's linear layer: `head.linear`.
    pub fn head_linear() -> Self {
        Self("head.linear".into())
    }

    /// A block's convolution: `{self}.conv`.
    pub fn conv(&self) -> Self {
        Self(format!("{}.conv", self.0))
    }

    /// A block's BatchNorm: `{self}.bn`.
    pub fn bn(&self) -> Self {
        Self(format!("{}.bn", self.0))
    }

    /// The tensor `{self}.{name}`.
    pub fn tensor(&self, name: &str) -> String {
        format!("{}.{name}", self.0)
    }

    /// `{self}.weight`.
    pub fn weight(&self) -> String {
        self.tensor("weight")
    }

    /// `{self}.bias`.
    pub fn bias(&self) -> String {
        self.tensor("bias")
    }

    /// A dense layer's tensors: `[weight, bias]`.
    pub fn pair(&self) -> [String; 2] {
        [self.weight(), self.bias()]
    }

    /// A conv block's trainable tensors, in update order: the convolution's weight,
    /// BatchNorm's γ and β.
    pub fn block_trainable(&self) -> [String; 3] {
        let bn = self.bn();
        [self.conv().weight(), bn.weight(), bn.bias()]
    }

    /// The path itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TensorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<TensorPath> for String {
    fn from(p: TensorPath) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::TensorPath;

    /// The names the checkpoint contract fixes (PyTorch's).
    #[test]
    fn paths_make_the_contracts_names() {
        assert_eq!(TensorPath::hidden(2).pair(), ["hidden.2.weight", "hidden.2.bias"]);
        assert_eq!(TensorPath::decoder(0).weight(), "decoder.0.weight");
        assert_eq!(TensorPath::head().bias(), "head.bias");
        assert_eq!(TensorPath::stage(3).conv().weight(), "stages.3.conv.weight");
        assert_eq!(TensorPath::stage(0).bn().tensor("running_var"), "stages.0.bn.running_var");
        assert_eq!(
            TensorPath::head_conv(1).block_trainable(),
            ["head.convs.1.conv.weight", "head.convs.1.bn.weight", "head.convs.1.bn.bias"]
        );
        assert_eq!(TensorPath::head_linear().weight(), "head.linear.weight");
        assert_eq!(String::from(TensorPath::stage(1)), "stages.1");
    }
}
