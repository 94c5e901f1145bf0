"""The sft-operator trainer: TRL SFTTrainer + PEFT + DeepSpeed, driven by an SFTJob spec."""
