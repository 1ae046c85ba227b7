// The dashboard's build: Vite + Preact (TSX compiled with Preact's automatic
// JSX runtime), served by the control API under /ui/ (src/api/ui.ts).
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/ui/',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: { target: 'es2022', sourcemap: false, assetsInlineLimit: 0 },
});
