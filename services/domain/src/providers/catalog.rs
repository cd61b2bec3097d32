//! Every provider keyhouse knows, once: what its keys look like, where a live test goes, whether
//! the platform keeps a key for it (and under which environment variable it falls back), and
//! whether users may bring their own. Platform keys and BYOK both read this one list; adding a
//! provider is one entry here.

use super::{ANTHROPIC_MESSAGES, Auth, LiveTest};

#[derive(Debug)]
pub struct Provider {
    /// The name used in RPCs and paths: `openai`, `litellm`, ….
    pub id: &'static str,
    pub display_name: &'static str,
    pub description: &'static str,
    /// Shown to people: what a key looks like.
    pub key_format: &'static str,
    /// Accepted prefixes; empty accepts any key of the minimum length.
    pub prefixes: &'static [&'static str],
    /// A prefix that looks right but belongs to another provider.
    pub not_prefix: Option<&'static str>,
    /// Set for a platform key: the environment variable used when no value is stored.
    pub env_var: Option<&'static str>,
    /// Users may store their own key for it (BYOK).
    pub byok: bool,
    /// A user's key only works with the user's own endpoint (self-hosted providers).
    pub requires_endpoint: bool,
    /// Where the live test goes unless configuration (or a user's endpoint) replaces it.
    pub base_url: &'static str,
    /// The request that proves a key works; `None` when there is no such request.
    pub live_test: Option<LiveTest>,
}

impl Provider {
    /// Whether `key` has this provider's shape.
    pub fn accepts(&self, key: &str) -> bool {
        super::key_shaped(key, self.prefixes, self.not_prefix)
    }
}

pub fn find(id: &str) -> Option<&'static Provider> {
    CATALOG.iter().find(|p| p.id == id)
}

/// The platform's keys, in catalog order.
pub fn platform() -> impl Iterator<Item = &'static Provider> {
    CATALOG.iter().filter(|p| p.env_var.is_some())
}

/// The providers users may bring a key for, in catalog order.
pub fn byok() -> impl Iterator<Item = &'static Provider> {
    CATALOG.iter().filter(|p| p.byok)
}

const BEARER_MODELS: Option<LiveTest> = Some(LiveTest::get("/v1/models", Auth::Bearer));

const PERPLEXITY_CHAT: LiveTest = LiveTest {
    post: true,
    path: "/chat/completions",
    auth: Auth::Bearer,
    headers: &[],
    json_body: Some(
        r#"{"model":"sonar","max_tokens":1,"messages":[{"role":"user","content":"ping"}]}"#,
    ),
};

/// A provider with the fields most entries share; each entry names what differs.
const BASE: Provider = Provider {
    id: "",
    display_name: "",
    description: "",
    key_format: "",
    prefixes: &[],
    not_prefix: None,
    env_var: None,
    byok: false,
    requires_endpoint: false,
    base_url: "",
    live_test: None,
};

pub static CATALOG: &[Provider] = &[
    Provider {
        id: "openrouter",
        display_name: "OpenRouter",
        description: "OpenRouter API key the gateway routes model traffic through",
        key_format: "sk-or-v1-...",
        prefixes: &["sk-or-"],
        env_var: Some("OPENROUTER_API_KEY"),
        byok: true,
        base_url: "https://openrouter.ai",
        live_test: Some(LiveTest::get("/api/v1/key", Auth::Bearer)),
        ..BASE
    },
    Provider {
        id: "provisioning",
        display_name: "OpenRouter Provisioning",
        description: "Provisioning key used to create and manage per-user OpenRouter keys",
        key_format: "mu-prov-...",
        prefixes: &["mu-prov-"],
        env_var: Some("PROVISIONING_KEY"),
        ..BASE
    },
    Provider {
        id: "litellm",
        display_name: "LiteLLM Master Key",
        description: "Master key of the LiteLLM proxy",
        key_format: "sk-...",
        prefixes: &["sk-"],
        env_var: Some("LITELLM_MASTER_KEY"),
        ..BASE
    },
    Provider {
        id: "openai",
        display_name: "OpenAI",
        description: "OpenAI API key",
        key_format: "sk-... (not sk-or-)",
        prefixes: &["sk-"],
        not_prefix: Some("sk-or-"),
        env_var: Some("OPENAI_API_KEY"),
        byok: true,
        base_url: "https://api.openai.com",
        live_test: BEARER_MODELS,
        ..BASE
    },
    Provider {
        id: "anthropic",
        display_name: "Anthropic",
        description: "Anthropic API key",
        key_format: "sk-ant-...",
        prefixes: &["sk-ant-"],
        env_var: Some("ANTHROPIC_API_KEY"),
        byok: true,
        base_url: "https://api.anthropic.com",
        live_test: Some(ANTHROPIC_MESSAGES),
        ..BASE
    },
    Provider {
        id: "huggingface",
        display_name: "Hugging Face",
        description: "Hugging Face access token",
        key_format: "hf_...",
        prefixes: &["hf_"],
        env_var: Some("HUGGINGFACE_API_KEY"),
        byok: true,
        base_url: "https://huggingface.co",
        live_test: Some(LiveTest::get("/api/whoami-v2", Auth::Bearer)),
        ..BASE
    },
    Provider {
        id: "cohere",
        display_name: "Cohere",
        description: "Cohere API key",
        key_format: "40 characters",
        byok: true,
        base_url: "https://api.cohere.com",
        live_test: BEARER_MODELS,
        ..BASE
    },
    Provider {
        id: "together",
        display_name: "Together AI",
        description: "Together AI API key",
        key_format: "64 hex characters (or tgp_v1_...)",
        byok: true,
        base_url: "https://api.together.xyz",
        live_test: BEARER_MODELS,
        ..BASE
    },
    Provider {
        id: "perplexity",
        display_name: "Perplexity",
        description: "Perplexity API key",
        key_format: "pplx-...",
        prefixes: &["pplx-"],
        byok: true,
        base_url: "https://api.perplexity.ai",
        live_test: Some(PERPLEXITY_CHAT),
        ..BASE
    },
    Provider {
        id: "groq",
        display_name: "Groq",
        description: "Groq API key",
        key_format: "gsk_...",
        prefixes: &["gsk_"],
        env_var: Some("GROQ_API_KEY"),
        byok: true,
        base_url: "https://api.groq.com",
        live_test: Some(LiveTest::get("/openai/v1/models", Auth::Bearer)),
        ..BASE
    },
    Provider {
        id: "xai",
        display_name: "xAI",
        description: "xAI (Grok) API key",
        key_format: "xai-...",
        prefixes: &["xai-"],
        env_var: Some("XAI_API_KEY"),
        base_url: "https://api.x.ai",
        live_test: BEARER_MODELS,
        ..BASE
    },
    Provider {
        id: "google",
        display_name: "Google AI",
        description: "Google AI Studio (Gemini) API key",
        key_format: "AIza...",
        prefixes: &["AIza"],
        env_var: Some("GOOGLE_AI_API_KEY"),
        base_url: "https://generativelanguage.googleapis.com",
        live_test: Some(LiveTest::get(
            "/v1beta/models",
            Auth::Header("x-goog-api-key"),
        )),
        ..BASE
    },
    Provider {
        id: "ollama",
        display_name: "Ollama",
        description: "Token for a self-hosted Ollama (or a proxy in front of it)",
        key_format: "any token your Ollama proxy expects (endpoint required)",
        byok: true,
        requires_endpoint: true,
        live_test: Some(LiveTest::get("/api/tags", Auth::Bearer)),
        ..BASE
    },
    Provider {
        id: "custom",
        display_name: "Custom (OpenAI-compatible)",
        description: "Key for any OpenAI-compatible endpoint",
        key_format: "any key (endpoint required)",
        byok: true,
        requires_endpoint: true,
        live_test: BEARER_MODELS,
        ..BASE
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_catalog() {
        let p = |id| find(id).expect("in the catalog");
        assert!(p("openrouter").accepts("sk-or-v1-0123456789"));
        assert!(!p("openrouter").accepts("sk-0123456789"));
        assert!(p("openai").accepts("sk-proj-0123456789"));
        assert!(
            !p("openai").accepts("sk-or-v1-0123456789"),
            "an OpenRouter key is not an OpenAI key"
        );
        assert!(p("anthropic").accepts("sk-ant-api03-xyz"));
        assert!(p("google").accepts("AIzaSyA-0123456"));
        assert!(
            !p("groq").accepts("gsk_short"),
            "shorter than 10 characters"
        );
        assert!(!p("xai").accepts("xai-with space"));
        assert!(p("custom").accepts("anything-long-enough"));
    }

    #[test]
    fn ids_are_unique_and_every_entry_is_used_somewhere() {
        for p in CATALOG {
            assert_eq!(
                CATALOG.iter().filter(|o| o.id == p.id).count(),
                1,
                "{}",
                p.id
            );
            assert!(p.env_var.is_some() || p.byok, "{} is neither", p.id);
            assert!(
                !p.byok || p.live_test.is_some(),
                "{}: users can test every key they bring",
                p.id
            );
        }
        assert_eq!(platform().count(), 9);
        assert_eq!(byok().count(), 10);
    }
}
