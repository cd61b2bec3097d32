//! The platform keys keyhouse knows: one entry each. Adding a provider is one entry here.

use crate::providers::{self, Auth, LiveTest};

#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub display_name: &'static str,
    pub description: &'static str,
    /// The environment variable used when no value is stored.
    pub env_var: &'static str,
    pub prefix: &'static str,
    /// A prefix that looks right but belongs to another provider.
    pub not_prefix: Option<&'static str>,
    pub format_hint: &'static str,
    pub base_url: &'static str,
    pub live_test: Option<LiveTest>,
}

impl Spec {
    /// Checks a candidate value against this entry's format.
    pub fn accepts(&self, value: &str) -> bool {
        crate::providers::key_shaped(value, &[self.prefix], self.not_prefix)
    }
}

pub fn find(name: &str) -> Option<&'static Spec> {
    CATALOG.iter().find(|s| s.name == name)
}

pub static CATALOG: &[Spec] = &[
    Spec {
        name: "openrouter",
        display_name: "OpenRouter",
        description: "OpenRouter API key the gateway routes model traffic through",
        env_var: "OPENROUTER_API_KEY",
        prefix: "sk-or-",
        not_prefix: None,
        format_hint: "sk-or-v1-...",
        base_url: "https://openrouter.ai",
        live_test: Some(LiveTest::get("/api/v1/key", Auth::Bearer)),
    },
    Spec {
        name: "provisioning",
        display_name: "OpenRouter Provisioning",
        description: "Provisioning key used to create and manage per-user OpenRouter keys",
        env_var: "PROVISIONING_KEY",
        prefix: "mu-prov-",
        not_prefix: None,
        format_hint: "mu-prov-...",
        base_url: "",
        live_test: None,
    },
    Spec {
        name: "litellm",
        display_name: "LiteLLM Master Key",
        description: "Master key of the LiteLLM proxy",
        env_var: "LITELLM_MASTER_KEY",
        prefix: "sk-",
        not_prefix: None,
        format_hint: "sk-...",
        base_url: "",
        live_test: None,
    },
    Spec {
        name: "openai",
        display_name: "OpenAI",
        description: "OpenAI API key",
        env_var: "OPENAI_API_KEY",
        prefix: "sk-",
        not_prefix: Some("sk-or-"),
        format_hint: "sk-... (not sk-or-)",
        base_url: "https://api.openai.com",
        live_test: Some(LiveTest::get("/v1/models", Auth::Bearer)),
    },
    Spec {
        name: "anthropic",
        display_name: "Anthropic",
        description: "Anthropic API key",
        env_var: "ANTHROPIC_API_KEY",
        prefix: "sk-ant-",
        not_prefix: None,
        format_hint: "sk-ant-...",
        base_url: "https://api.anthropic.com",
        live_test: Some(providers::ANTHROPIC_MESSAGES),
    },
    Spec {
        name: "huggingface",
        display_name: "Hugging Face",
        description: "Hugging Face access token",
        env_var: "HUGGINGFACE_API_KEY",
        prefix: "hf_",
        not_prefix: None,
        format_hint: "hf_...",
        base_url: "https://huggingface.co",
        live_test: Some(LiveTest::get("/api/whoami-v2", Auth::Bearer)),
    },
    Spec {
        name: "groq",
        display_name: "Groq",
        description: "Groq API key",
        env_var: "GROQ_API_KEY",
        prefix: "gsk_",
        not_prefix: None,
        format_hint: "gsk_...",
        base_url: "https://api.groq.com",
        live_test: Some(LiveTest::get("/openai/v1/models", Auth::Bearer)),
    },
    Spec {
        name: "xai",
        display_name: "xAI",
        description: "xAI (Grok) API key",
        env_var: "XAI_API_KEY",
        prefix: "xai-",
        not_prefix: None,
        format_hint: "xai-...",
        base_url: "https://api.x.ai",
        live_test: Some(LiveTest::get("/v1/models", Auth::Bearer)),
    },
    Spec {
        name: "google",
        display_name: "Google AI",
        description: "Google AI Studio (Gemini) API key",
        env_var: "GOOGLE_AI_API_KEY",
        prefix: "AIza",
        not_prefix: None,
        format_hint: "AIza...",
        base_url: "https://generativelanguage.googleapis.com",
        live_test: Some(LiveTest::get(
            "/v1beta/models",
            Auth::Header("x-goog-api-key"),
        )),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_catalog() {
        let spec = |n| find(n).expect("in the catalog");
        assert!(spec("openrouter").accepts("sk-or-v1-0123456789"));
        assert!(!spec("openrouter").accepts("sk-0123456789"));
        assert!(spec("openai").accepts("sk-proj-0123456789"));
        assert!(
            !spec("openai").accepts("sk-or-v1-0123456789"),
            "an OpenRouter key is not an OpenAI key"
        );
        assert!(spec("anthropic").accepts("sk-ant-api03-xyz"));
        assert!(spec("google").accepts("AIzaSyA-0123456"));
        assert!(
            !spec("groq").accepts("gsk_short"),
            "shorter than 10 characters"
        );
        assert!(!spec("xai").accepts("xai-with space"));
    }

    #[test]
    fn names_are_unique() {
        for s in CATALOG {
            assert_eq!(
                CATALOG.iter().filter(|o| o.name == s.name).count(),
                1,
                "{}",
                s.name
            );
        }
    }
}
