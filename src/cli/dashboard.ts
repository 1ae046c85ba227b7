// `thaw dashboard`: a one-time sign-in URL for the web dashboard (/ui/ on the
// control API's port). The code in it works once, for 5 minutes.
import type { Command } from 'commander';
import type { Ctx } from './context.ts';

export function registerDashboard(program: Command, ctx: Ctx): void {
  program
    .command('dashboard')
    .description('print a one-time sign-in URL for the web dashboard (valid 5 minutes, once)')
    .action(async (_opts, cmd: Command) => {
      const r = await ctx.withApi(cmd, (api) => api.dashboardLogin());
      ctx.print(cmd, r, () => `Open this URL in a browser (it works once, until ${new Date(r.expires_at).toLocaleTimeString()}):\n${r.url}`);
    });
}
