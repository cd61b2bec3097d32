//! The providers a user can bring a key for: one entry each.

use crate::providers::{self, Auth, LiveTest};

#[derive(Debug)]
pub struct Provider {
    pub id: &'static str,
    pub name: &'static str,
    /// Shown to users: what a key looks like.
    pub key_format: &'static str,
    /// Accepted prefixes; empty accepts any key of the minimum length.
    pub prefixes: &'static [&'static str],
    /// A prefix that belongs to another provider.
    pub not_prefix: Option<&'static str>,
    pub requires_endpoint: bool,
    /// Where the live test goes unless the user's endpoint replaces it.
    pub base_url: &'static str,
    pub live_test: LiveTest,
}

impl Provider {
    pub fn accepts(&self, key: &str) -> bool {
        crate::providers::key_shaped(key, self.prefixes, self.not_prefix)
    }
}

pub fn find(id: &str) -> Option<&'static Provider> {
    CATALOG.iter().find(|p| p.id == id)
}

const PERPLEXITY_TEST: LiveTest = LiveTest {
    post: true,
    path: "/chat/completions",
    auth: Auth::Bearer,
    headers: &[],
    json_body: Some(
        r#"{"model":"sonar","max_tokens":1,"messages":[{"role":"user","content":"ping"}]}"#,
    ),
};

pub static CATALOG: &[Provider] = &[
    Provider {
        id: "openrouter",
        name: "OpenRouter",
        key_format: "sk-or-v1-...",
        prefixes: &["sk-or-"],
        not_prefix: None,
        requires_endpoint: false,
        base_url: "https://openrouter.ai",
        live_test: LiveTest::get("/api/v1/key", Auth::Bearer),
    },
    Provider {
        id: "openai",
        name: "OpenAI",
        key_format: "sk-... (not sk-or-)",
        prefixes: &["sk-"],
        not_prefix: Some("sk-or-"),
        requires_endpoint: false,
        base_url: "https://api.openai.com",
        live_test: LiveTest::get("/v1/models", Auth::Bearer),
    },
    Provider {
        id: "anthropic",
        name: "Anthropic",
        key_format: "sk-ant-...",
        prefixes: &["sk-ant-"],
        not_prefix: None,
        requires_endpoint: false,
        base_url: "https://api.anthropic.com",
        live_test: providers::ANTHROPIC_MESSAGES,
    },
    Provider {
        id: "huggingface",
        name: "Hugging Face",
        key_format: "hf_...",
        prefixes: &["hf_"],
        not_prefix: None,
        requires_endpoint: false,
        base_url: "https://huggingface.co",
        live_test: LiveTest::get("/api/whoami-v2", Auth::Bearer),
    },
    Provider {
        id: "cohere",
        name: "Cohere",
        key_format: "40 characters",
        prefixes: &[],
        not_prefix: None,
        requires_endpoint: false,
        base_url: "https://api.cohere.com",
        live_test: LiveTest::get("/v1/models", Auth::Bearer),
    },
    Provider {
        id: "together",
        name: "Together AI",
        key_format: "64 hex characters (or tgp_v1_...)",
        prefixes: &[],
        not_prefix: None,
        requires_endpoint: false,
        base_url: "https://api.together.xyz",
        live_test: LiveTest::get("/v1/models", Auth::Bearer),
    },
    Provider {
        id: "perplexity",
        name: "Perplexity",
        key_format: "pplx-...",
        prefixes: &["pplx-"],
        not_prefix: None,
        requires_endpoint: false,
        base_url: "https://api.perplexity.ai",
        live_test: PERPLEXITY_TEST,
    },
    Provider {
        id: "groq",
        name: "Groq",
        key_format: "gsk_...",
        prefixes: &["gsk_"],
        not_prefix: None,
        requires_endpoint: false,
        base_url: "https://api.groq.com",
        live_test: LiveTest::get("/openai/v1/models", Auth::Bearer),
    },
    Provider {
        id: "ollama",
        name: "Ollama",
        key_format: "any token your Ollama proxy expects (endpoint required)",
        prefixes: &[],
        not_prefix: None,
        requires_endpoint: true,
        base_url: "",
        live_test: LiveTest::get("/api/tags", Auth::Bearer),
    },
    Provider {
        id: "custom",
        name: "Custom (OpenAI-compatible)",
        key_format: "any key (endpoint required)",
        prefixes: &[],
        not_prefix: None,
        requires_endpoint: true,
        base_url: "",
        live_test: LiveTest::get("/v1/models", Auth::Bearer),
    },
];
