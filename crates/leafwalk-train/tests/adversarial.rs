//! PGD's adversarial examples raise the loss and stay in their ball and in [0, 1], for both
//! norms, on a plain and a batch-norm network.

use candle_core::{DType, Device, Tensor, D};
use leafwalk_data::dataset_info;
use leafwalk_models::{Arch, Classifier};
use leafwalk_train::Adversary;

fn mean_loss(model: &Classifier, images: &Tensor, labels: &Tensor) -> f32 {
    let log_probs = model.log_probs_t(images, false).unwrap();
    let picked = log_probs.gather(&labels.unsqueeze(1).unwrap(), 1).unwrap();
    -picked.mean_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn attacks_raise_the_loss_within_their_ball() {
    let mnist = dataset_info("mnist").unwrap();
    let images = Tensor::rand(0f32, 1f32, (6, 1, 28, 28), &Device::Cpu).unwrap();
    let labels = Tensor::from_vec((0..6u32).collect::<Vec<_>>(), 6, &Device::Cpu).unwrap();
    for arch in [Arch::MnistCnn, Arch::ResnetMini] {
        let model = Classifier::new(arch, mnist, 3, &Device::Cpu, DType::F32).unwrap();
        let clean = mean_loss(&model, &images, &labels);
        for flag in ["l2:1.5,5", "linf:0.05,5"] {
            let adversary: Adversary = flag.parse().unwrap();
            let attacked = adversary.attack(&model, &images, &labels).unwrap();
            let loss = mean_loss(&model, &attacked, &labels);
            assert!(loss > clean, "{arch} {flag}: loss {clean} → {loss}");
            let delta = (&attacked - &images).unwrap().flatten_from(1).unwrap();
            let size: Vec<f32> = match flag.starts_with("l2") {
                true => delta.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap().to_vec1().unwrap(),
                false => delta.abs().unwrap().max(D::Minus1).unwrap().to_vec1().unwrap(),
            };
            assert!(size.iter().all(|&s| s <= adversary.epsilon * 1.0001), "{arch} {flag}: {size:?}");
            let (low, high) = (
                attacked.min_all().unwrap().to_scalar::<f32>().unwrap(),
                attacked.max_all().unwrap().to_scalar::<f32>().unwrap(),
            );
            assert!(
                (0.0..=1.0).contains(&low) && (0.0..=1.0).contains(&high),
                "{arch} {flag}: pixels in [{low}, {high}]"
            );
        }
    }
}
