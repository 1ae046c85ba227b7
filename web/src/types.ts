// Row shapes the dashboard reads (the control API's wire shapes, snake_case).
// No DOM here: the waterfall logic and its tests (test/web/) use these too.

export interface Wake {
  id: string;
  app: string;
  at: string;
  wall_ms: number;
  boot_mode: 'snapshot' | 'cold';
  boot_ms: number;
  gate_ms: number | null;
  app_start_ms: number;
  first_byte_ms?: number | null;
  fs_errors: number;
  fallback_reason: string | null;
  node: string | null;
  seed_source: 'local' | 'pulled' | 'none';
  placement?: string | null;
  stages: Record<string, number>;
}

export interface App {
  name: string;
  state: string;
  deploy_id: string | null;
  seed_id: string | null;
  node: string | null;
  idle_timeout_s: number;
  error: string | null;
  updated_at: string;
  last_wake_at: string | null;
  url?: string;
  last_wake?: Wake | null;
  /** The app's volume (overview only): guest path, size, home node. */
  volume?: { path: string; size_bytes: number; node: string | null } | null;
}

export interface Seed {
  id: string;
  app: string;
  deploy_id: string;
  node: string | null;
  bytes_apparent: number;
  bytes_allocated: number;
  bytes_compressed: number | null;
  replicated: boolean;
  created_at: string;
  last_used_at: string;
  held_by?: string[];
}

export interface Node {
  name: string;
  url: string;
  state: 'up' | 'down';
  local: boolean;
  capacity: number;
  running: number;
  seeds: number;
  last_heartbeat_at: string | null;
}

export interface Overview {
  last_event_id: string;
  apps: App[];
  seeds: Seed[];
  nodes: Node[];
}

export interface AppDetail {
  last_event_id: string;
  app: App;
  env_names: string[];
  wakes: Wake[];
}
